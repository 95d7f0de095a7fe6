"""Simulated calendar tools: events, free slots, reminders, public holidays."""

from __future__ import annotations

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import altered, misspelled_country, misspelled_mail, stale_date, unissued
from ttpa_jax.construct.toolbox.registry import ToolError, registrar

tool = registrar("calendar")


def _minutes(hhmm: str) -> int:
    h, m = map(int, hhmm.split(":"))
    return h * 60 + m


def _reminder_phrase(reminder: dict) -> str:
    article = "an" if reminder["method"][:1] in "aeiou" else "a"
    return f"with {article} {reminder['method']} reminder {reminder['minutes_before']} minutes ahead"


def _event_id(rng) -> str:
    return vocab.code(rng, "EV", 5)


def _twelve_hours_early(args, rng) -> str | None:
    """An afternoon time written as its morning twin (18:30 -> 06:30)."""
    time = args.get("latest_time")
    return vocab.add_minutes(time, -12 * 60) if time and _minutes(time) >= 13 * 60 else None


@tool("create_event", ask="add an event",
      params={"title": "called \"{}\"", "date": "on {}", "start_time": "at {}",
              "duration_minutes": "lasting {} minutes", "attendees": "with {}", "location": "in {}",
              "reminder": _reminder_phrase},
      label="the event \"{title}\"",
      values={"title": vocab.EVENT_TITLES, "duration_minutes": lambda rng: rng.choice([15, 30, 45, 60, 90]),
              "location": ["Room 4B", "the main office", "Cafe Lumen", "the community hall"],
              "attendees": lambda rng: sorted({vocab.email(rng) for _ in range(rng.randint(1, 2))})},
      mistakes=(stale_date("date", "date"), misspelled_mail("attendees")))
def create_event(args, rng):
    duration = args.get("duration_minutes", 60)
    return {"event_id": _event_id(rng), "title": args["title"], "date": args["date"],
            "start_time": args["start_time"], "end_time": vocab.add_minutes(args["start_time"], duration),
            "invited": len(args.get("attendees", [])), "status": "created"}


@tool("list_events", ask="list what is planned", params={"date": "for {}", "calendar": "in the {} calendar"},
      label="the plan for {date}")
def list_events(args, rng):
    starts = sorted({vocab.clock(rng, 8, 18) for _ in range(rng.randint(1, 3))})
    events = [{"event_id": _event_id(rng), "title": rng.choice(vocab.EVENT_TITLES), "start_time": s}
              for s in starts]
    return {"date": args["date"], "calendar": args.get("calendar", "work"), "count": len(events),
            "events": events}


@tool("find_free_slot", ask="find an open time",
      params={"date": "on {}", "duration_minutes": "of {} minutes", "earliest_time": "after {}",
              "latest_time": "ending by {}"},
      label="an open time on {date}",
      values={"duration_minutes": lambda rng: rng.choice([30, 45, 60, 90, 120]),
              "earliest_time": lambda rng: vocab.clock(rng, 7, 11),
              "latest_time": lambda rng: vocab.clock(rng, 16, 21)},
      mistakes=(altered("latest_time", _twelve_hours_early),))
def find_free_slot(args, rng):
    lo = _minutes(args.get("earliest_time", "08:00"))
    hi = _minutes(args.get("latest_time", "18:00"))
    need = args["duration_minutes"]
    if hi - lo < need:
        raise ToolError("the window between earliest_time and latest_time is shorter than the duration")
    start = lo + 15 * rng.randint(0, (hi - lo - need) // 15)
    start_text = f"{start // 60:02d}:{start % 60:02d}"
    return {"date": args["date"], "start_time": start_text,
            "end_time": vocab.add_minutes(start_text, need)}


@tool("cancel_event", ask="call off",
      params={"event_id": "event {}",
              "notify_attendees": ("and let the guests know", "without telling the guests")},
      chained={"event_id": "that event"}, label="event {event_id}",
      values={"event_id": _event_id}, mistakes=(unissued("event_id", "event"),))
def cancel_event(args, rng):
    notified = rng.randint(1, 6) if args.get("notify_attendees") else 0
    return {"event_id": args["event_id"], "status": "cancelled", "guests_notified": notified}


@tool("reschedule_event", ask="move",
      params={"event_id": "event {}", "new_date": "to {}", "new_start_time": "at {}"},
      chained={"event_id": "that event"}, label="event {event_id}",
      values={"event_id": _event_id},
      mistakes=(unissued("event_id", "event"), stale_date("new_date", "new date")))
def reschedule_event(args, rng):
    return {"event_id": args["event_id"], "date": args["new_date"], "start_time": args["new_start_time"],
            "status": "rescheduled", "conflicts": rng.choice([0, 0, 0, 1])}


@tool("set_reminder", ask="remind me", params={"text": "to {}", "date": "on {}", "time": "at {}"},
      label="the reminder", values={"text": vocab.REMINDER_TEXTS},
      mistakes=(stale_date("date", "reminder date"),))
def set_reminder(args, rng):
    return {"reminder_id": vocab.code(rng, "RM", 6), "text": args["text"],
            "scheduled_for": f"{args['date']} {args['time']}", "status": "set"}


@tool("get_holidays", ask="list the public holidays",
      params={"country": "in {}", "year": "for {}", "month": "in month {}"},
      label="holidays in {country} in {year}",
      values={"year": lambda rng: rng.randint(2024, 2027), "month": [1, 3, 5, 6, 9, 11, 12]},
      mistakes=(misspelled_country("country"),))
def get_holidays(args, rng):
    chosen = [h for h in vocab.HOLIDAYS if rng.random() < 0.75 or h[1] == 1]
    if "month" in args:
        chosen = [h for h in chosen if h[1] == args["month"]]
    holidays = [{"name": name, "date": f"{args['year']}-{m:02d}-{d:02d}"} for name, m, d in chosen]
    return {"country": args["country"], "year": args["year"], "count": len(holidays),
            "holidays": holidays}
