"""Simulated map tools: geocoding, routes, distances, nearby places, time zones."""

from __future__ import annotations

import math

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import misspelled_place, unissued
from ttpa_jax.construct.toolbox.registry import ToolError, registrar, stable_rng

tool = registrar("maps")

SPEED_KMH = {"car": 55.0, "foot": 4.8, "bike": 16.0, "transit": 32.0}
CHAINED_SPOT = {"latitude": "near that spot", "longitude": "near that spot"}
ROUTE_MISTAKES = (misspelled_place("origin"), misspelled_place("destination"))


def _place(rng) -> str:
    return rng.choice([vocab.address(rng), f"{rng.choice(vocab.LANDMARKS)}, {rng.choice(vocab.CITIES)}"])


def _point(text: str) -> tuple[float, float]:
    """Stable coordinates for a place name."""
    rng = stable_rng("geocode", text.strip().lower())
    return round(rng.uniform(-55, 65), 5), round(rng.uniform(-160, 170), 5)


def _road_km(origin: str, destination: str) -> float:
    if origin.strip().lower() == destination.strip().lower():
        raise ToolError("origin and destination are the same place")
    (a, b), (c, d) = _point(origin), _point(destination)
    # Roads are longer than the straight line; the gap in degrees stands in for hundreds of km.
    gap = math.hypot(a - c, b - d)
    return round(2 + gap * stable_rng("road", [origin, destination]).uniform(1.1, 1.4), 1)


def _two_places(rng) -> dict:
    origin = _place(rng)
    destination = _place(rng)
    while destination == origin:
        destination = _place(rng)
    return {"origin": origin, "destination": destination}


@tool("get_coordinates", ask="find the coordinates", params={"address": "of {}"}, label="{address}",
      values={"address": _place}, mistakes=(misspelled_place("address"),))
def get_coordinates(args, rng):
    latitude, longitude = _point(args["address"])
    return {"address": args["address"], "latitude": latitude, "longitude": longitude}


@tool("get_directions", ask="plan a route",
      params={"origin": "from {}", "destination": "to {}", "mode": "by {}",
              "avoid_tolls": ("with no toll roads", "with toll roads allowed")},
      label="the route to {destination}", joint=_two_places, mistakes=ROUTE_MISTAKES)
def get_directions(args, rng):
    km = _road_km(args["origin"], args["destination"])
    mode = args.get("mode", "car")
    if args.get("avoid_tolls") and mode == "car":
        km = round(km * 1.12, 1)
    return {"distance_km": km, "duration_minutes": max(2, round(km / SPEED_KMH[mode] * 60)),
            "mode": mode, "via": f"{rng.choice(vocab.STREETS)}", "steps": rng.randint(3, 14)}


@tool("find_nearby_places", ask="find",
      params={"category": "a {}", "latitude": "near latitude {}", "longitude": "and longitude {}",
              "radius_m": "within {} meters"},
      chained=CHAINED_SPOT, label="places near there",
      values={"radius_m": lambda rng: rng.choice([300, 500, 1000, 2000, 5000])})
def find_nearby_places(args, rng):
    radius = args.get("radius_m", 1500)
    places = sorted(({"place_id": vocab.code(rng, "PL", 6),
                      "name": f"{rng.choice(vocab.PLACE_WORDS)} {args['category'].title()}",
                      "distance_m": rng.randint(20, radius), "rating": round(rng.uniform(3.0, 5.0), 1)}
                     for _ in range(rng.randint(2, 3))), key=lambda p: p["distance_m"])
    return {"category": args["category"], "count": len(places), "places": places}


@tool("get_place_details", ask="get the details", params={"place_id": "for place {}"},
      chained={"place_id": "for the closest place found"}, label="place {place_id}",
      values={"place_id": lambda rng: vocab.code(rng, "PL", 6)}, mistakes=(unissued("place_id", "place"),))
def get_place_details(args, rng):
    return {"place_id": args["place_id"], "address": vocab.address(rng), "phone": vocab.phone(rng),
            "open_now": rng.random() < 0.7, "closes_at": vocab.clock(rng, 17, 23),
            "rating": round(rng.uniform(3.0, 5.0), 1)}


@tool("get_distance", ask="measure the distance",
      params={"origin": "from {}", "destination": "to {}", "unit": "in {}"},
      label="the distance to {destination}", joint=_two_places, mistakes=ROUTE_MISTAKES)
def get_distance(args, rng):
    km = _road_km(args["origin"], args["destination"])
    unit = args.get("unit", "km")
    return {"distance": km if unit == "km" else round(km * 0.621371, 1), "unit": unit}


@tool("get_timezone", ask="find the time zone",
      params={"latitude": "at latitude {}", "longitude": "and longitude {}"},
      chained={"latitude": "for that spot", "longitude": "for that spot"}, label="the time zone there")
def get_timezone(args, rng):
    offset = max(-12, min(14, round(args["longitude"] / 15)))
    sign = "+" if offset >= 0 else "-"
    return {"timezone": f"UTC{sign}{abs(offset)}", "utc_offset": f"{sign}{abs(offset):02d}:00",
            "local_time": vocab.clock(rng, 0, 23), "daylight_saving": rng.random() < 0.4}


@tool("reverse_geocode", ask="find the street address",
      params={"latitude": "at latitude {}", "longitude": "and longitude {}"},
      chained={"latitude": "of that spot", "longitude": "of that spot"}, label="the address there")
def reverse_geocode(args, rng):
    city = rng.choice(vocab.CITIES)
    return {"address": f"{rng.randint(1, 99)} {rng.choice(vocab.STREETS)}", "city": city,
            "postcode": f"{rng.randint(1000, 99999)}"}
