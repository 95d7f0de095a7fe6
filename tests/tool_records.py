"""Hand-written SFT records with tool calls, and a tiny model directory trained on their text."""

import json

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a time zone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]


def _call(cid, name, args):
    return {"type": "function", "id": cid, "function": {"name": name, "arguments": args}}


RECORDS = [
    {"id": "r1", "tools": TOOLS, "messages": [
        {"role": "user", "content": "What's the weather in Lyon in celsius?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_0", "get_weather", {"city": "Lyon", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": "{\"temp_c\": 14}"},
        {"role": "assistant", "content": "It is 14 °C in Lyon."}]},
    {"id": "r2", "tools": TOOLS, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Time in Paris, then the weather there?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_0", "get_time", "{\"tz\": \"Europe/Paris\"}")]},
        {"role": "tool", "tool_call_id": "call_0", "name": "get_time", "content": "{\"time\": \"10:00\"}"},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "get_weather", {"city": "Paris"})]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp_c\": 9}"},
        {"role": "assistant", "content": "10:00, 9 °C."}]},
    {"id": "r3", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"}]},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def build_tiny_model_dir(out_dir):
    """A tiny-qwen2 directory whose BPE tokenizer is trained on the records' text."""
    from ttpa_jax.model.tiny import build_model_dir

    texts = [json.dumps(r, ensure_ascii=False) for r in RECORDS] * 5
    return build_model_dir(out_dir, texts, preset="tiny-qwen2", seed=0)
