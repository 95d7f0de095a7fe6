"""Simulated messaging tools: email, text messages, contacts, team chat."""

from __future__ import annotations

import math

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import FIRST_WORD, misspell, misspelled_mail, stale_date, with_value
from ttpa_jax.construct.toolbox.registry import Mistake, ToolError, registrar

tool = registrar("messaging")


def _emails(rng) -> list[str]:
    return sorted({vocab.email(rng) for _ in range(rng.randint(1, 2))})


def _message_id(rng) -> str:
    return "MSG-" + vocab.letters(rng, 8)


# Digits of a full phone number (country code included) for the codes whose length is fixed.
PHONE_DIGITS = {"1": 11, "44": 12}


def _fixed_length(number: str) -> int | None:
    return next((n for code, n in PHONE_DIGITS.items() if number[1:].startswith(code)), None)


def _check_phone(args) -> None:
    number = args["phone_number"]
    if _fixed_length(number) not in (None, len(number) - 1):
        raise ToolError(f"{number} is not a full phone number")


def _drop_digit(args, rng):
    """A phone number with one of the ten digits after its country code left out."""
    number = args["phone_number"]
    if _fixed_length(number) != len(number) - 1:
        return None
    i = rng.randrange(len(number) - 10, len(number))
    return with_value(args, "phone_number", number[:i] + number[i + 1:])


@tool("send_email", ask="email",
      params={"to": "{}", "subject": "with the subject \"{}\"", "body": "saying \"{}\"", "cc": "copying {}",
              "priority": "marked {} priority"},
      label="the email to {to}",
      values={"to": _emails, "cc": _emails, "subject": vocab.EMAIL_SUBJECTS, "body": vocab.MESSAGE_TEXTS},
      mistakes=(misspelled_mail("to"), misspelled_mail("cc")))
def send_email(args, rng):
    recipients = len(args["to"]) + len(args.get("cc", []))
    return {"message_id": _message_id(rng), "status": "sent", "recipients": recipients,
            "sent_at": f"{vocab.day(rng)} {vocab.clock(rng)}"}


@tool("send_sms", ask="text", params={"phone_number": "{}", "message": "saying \"{}\""},
      chained={"phone_number": "the first contact found"}, label="the text message",
      values={"phone_number": vocab.phone, "message": vocab.MESSAGE_TEXTS},
      mistakes=(Mistake(_drop_digit, _check_phone),))
def send_sms(args, rng):
    return {"message_id": _message_id(rng), "status": rng.choice(["delivered", "sent"]),
            "segments": max(1, math.ceil(len(args["message"]) / 70))}


@tool("search_contacts", ask="look up", params={"name": "the contact {}"}, label="contacts named {name}",
      values={"name": lambda rng: rng.choice(vocab.FIRST_NAMES)},
      mistakes=(misspell("name", vocab.FIRST_NAMES, "no contact named {!r}", FIRST_WORD),))
def search_contacts(args, rng):
    first = args["name"].split()[0].title() if args["name"].strip() else rng.choice(vocab.FIRST_NAMES)
    contacts = []
    for last in rng.sample(vocab.LAST_NAMES, rng.randint(1, 2)):
        contacts.append({"contact_id": vocab.code(rng, "CN", 5), "name": f"{first} {last}",
                         "email": f"{first.lower()}.{last.lower()}@example.com", "phone_number": vocab.phone(rng)})
    return {"count": len(contacts), "contacts": contacts}


@tool("read_inbox", ask="show my messages",
      params={"folder": "in the {} folder", "unread_only": ("that I have not opened", "opened or not"),
              "limit": "up to {} of them"},
      label="your messages", values={"limit": lambda rng: rng.choice([3, 5, 10])})
def read_inbox(args, rng):
    unread = rng.randint(0, 12)
    count = min(args.get("limit", 3), 3)
    messages = [{"message_id": _message_id(rng), "sender": vocab.email(rng),
                 "subject": rng.choice(vocab.EMAIL_SUBJECTS)} for _ in range(count)]
    return {"folder": args.get("folder", "inbox"), "unread": unread, "count": len(messages),
            "messages": messages}


@tool("post_message", ask="post",
      params={"text": "\"{}\"", "channel": "in {}", "urgent": ("and alert everyone", "quietly")},
      label="the post in {channel}", values={"text": vocab.MESSAGE_TEXTS, "channel": vocab.CHANNELS},
      mistakes=(misspell("channel", vocab.CHANNELS, "no channel {!r}"),))
def post_message(args, rng):
    return {"message_id": _message_id(rng), "channel": args["channel"],
            "timestamp": f"{vocab.day(rng)} {vocab.clock(rng)}",
            "members_alerted": rng.randint(3, 40) if args.get("urgent") else 0}


@tool("schedule_message", ask="schedule a note",
      params={"recipient": "to {}", "text": "saying \"{}\"", "send_at": "for {date} at {time}"},
      label="the note to {recipient}",
      values={"recipient": vocab.email, "text": vocab.MESSAGE_TEXTS,
              "send_at": lambda rng: {"date": vocab.day(rng), "time": vocab.clock(rng)}},
      mistakes=(stale_date("send_at.date", "send date"), misspelled_mail("recipient")))
def schedule_message(args, rng):
    return {"scheduled_id": vocab.code(rng, "SCH", 6), "recipient": args["recipient"],
            "send_at": f"{args['send_at']['date']} {args['send_at']['time']}", "status": "scheduled"}
