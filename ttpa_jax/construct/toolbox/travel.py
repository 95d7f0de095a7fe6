"""Simulated travel tools: flights, hotels, car rental, travel advisories."""

from __future__ import annotations

import random

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import misspelled_city, misspelled_country, stale_date, unissued
from ttpa_jax.construct.toolbox.registry import ToolError, registrar

tool = registrar("travel")

CABIN_FACTOR = {"economy": 1.0, "premium": 1.6, "business": 3.2, "first": 5.5}


def _two_cities(rng: random.Random) -> dict:
    origin, destination = rng.sample(vocab.CITIES, 2)
    return {"origin": origin, "destination": destination}


@tool("search_flights", ask="find flights",
      params={"origin": "from {}", "destination": "to {}", "departure_date": "on {}",
              "passengers": "for {} travellers", "cabin_class": "in {} class",
              "max_stops": "with at most {} stops"},
      label="flights from {origin} to {destination}", joint=_two_cities,
      mistakes=(misspelled_city("origin"), misspelled_city("destination"),
                stale_date("departure_date", "departure date")))
def search_flights(args, rng):
    if args["origin"].strip().lower() == args["destination"].strip().lower():
        raise ToolError("origin and destination are the same city")
    passengers = args.get("passengers", 1)
    factor = CABIN_FACTOR[args.get("cabin_class", "economy")]
    flights = []
    for _ in range(rng.randint(2, 3)):
        depart = vocab.clock(rng, 6, 21)
        stops = rng.randint(0, args.get("max_stops", 2))
        flights.append({
            "flight_id": vocab.code(rng, "FL", 4),
            "airline": rng.choice(vocab.AIRLINES),
            "departure_time": depart,
            "arrival_time": vocab.add_minutes(depart, rng.randint(70, 600) + 90 * stops),
            "stops": stops,
            "price": vocab.money(rng.uniform(80, 650) * factor * passengers),
        })
    flights.sort(key=lambda f: f["price"])
    return {"origin": args["origin"], "destination": args["destination"],
            "date": args["departure_date"], "currency": "USD", "flights": flights}


@tool("book_flight", ask="book a seat",
      params={"flight_id": "on flight {}", "passenger_name": "for {}",
              "seat_preference": "with a {} seat", "checked_bags": "with {} bags in the hold"},
      chained={"flight_id": "on the cheapest flight found"},
      label="the booking for {passenger_name}",
      values={"flight_id": lambda rng: vocab.code(rng, "FL", 4), "passenger_name": vocab.person},
      mistakes=(unissued("flight_id", "flight"),))
def book_flight(args, rng):
    row = rng.randint(3, 38)
    letter = {"window": "A", "aisle": "C", "middle": "B"}[args.get("seat_preference", rng.choice(
        ["window", "aisle", "middle"]))]
    bags = args.get("checked_bags", 0)
    return {"booking_reference": "BK" + vocab.letters(rng, 6), "flight_id": args["flight_id"],
            "passenger_name": args["passenger_name"], "seat": f"{row}{letter}",
            "checked_bags": bags, "total_price": vocab.money(rng.uniform(90, 700) + 35 * bags),
            "status": "confirmed"}


@tool("search_hotels", ask="find a hotel",
      params={"city": "in {}", "check_in_date": "from {}", "nights": "for {} nights",
              "guests": "for {} guests", "max_price": "under {} dollars a night",
              "amenities": "with {}"},
      label="hotels in {city}",
      values={"max_price": lambda rng: rng.choice([90, 120, 150, 200, 250, 300])},
      mistakes=(misspelled_city("city"), stale_date("check_in_date", "check-in date")))
def search_hotels(args, rng):
    cap = args.get("max_price", 400)
    hotels = []
    for _ in range(rng.randint(2, 3)):
        nightly = vocab.money(rng.uniform(min(45, cap * 0.5), cap))
        hotels.append({"hotel_id": vocab.code(rng, "HT", 4),
                       "name": f"Hotel {rng.choice(vocab.HOTEL_WORDS)} {args['city']}",
                       "stars": rng.randint(2, 5), "price_per_night": nightly,
                       "total_price": vocab.money(nightly * args["nights"])})
    hotels.sort(key=lambda h: h["price_per_night"])
    return {"city": args["city"], "check_in_date": args["check_in_date"], "nights": args["nights"],
            "currency": "USD", "hotels": hotels}


@tool("book_hotel", ask="reserve a room",
      params={"hotel_id": "at hotel {}", "guest_name": "for {}", "room_type": "as a {} room",
              "breakfast": ("with breakfast", "without breakfast")},
      chained={"hotel_id": "at the cheapest hotel found"},
      label="the reservation for {guest_name}",
      values={"hotel_id": lambda rng: vocab.code(rng, "HT", 4), "guest_name": vocab.person},
      mistakes=(unissued("hotel_id", "hotel"),))
def book_hotel(args, rng):
    room = args.get("room_type", "double")
    rate = rng.uniform(60, 180) * {"single": 0.8, "double": 1.0, "suite": 2.1}[room]
    if args.get("breakfast"):
        rate += 18
    return {"confirmation_code": "HC" + vocab.letters(rng, 7), "hotel_id": args["hotel_id"],
            "guest_name": args["guest_name"], "room_type": room, "nightly_rate": vocab.money(rate),
            "status": "confirmed"}


@tool("get_flight_status", ask="look up the status", params={"flight_number": "of flight {}",
                                                              "date": "on {}"},
      label="flight {flight_number}",
      values={"flight_number": lambda rng: rng.choice(["LH", "AF", "BA", "KL", "SK", "TP", "AC"])
              + str(rng.randint(100, 2999))},
      mistakes=(unissued("flight_number", "flight"),))
def get_flight_status(args, rng):
    status = rng.choice(["scheduled", "boarding", "departed", "delayed", "landed"])
    delay = rng.choice([15, 25, 40, 70, 120]) if status == "delayed" else 0
    return {"flight_number": args["flight_number"], "status": status,
            "gate": f"{rng.choice('ABCDE')}{rng.randint(1, 40)}", "terminal": rng.randint(1, 3),
            "scheduled_departure": vocab.clock(rng, 5, 22), "delay_minutes": delay}


@tool("rent_car", ask="rent a car",
      params={"pickup_city": "in {}", "pickup_date": "from {}", "days": "for {} days",
              "car_type": "choosing a {} model", "driver_age": "for a driver aged {}"},
      label="the car rental in {pickup_city}",
      mistakes=(misspelled_city("pickup_city"), stale_date("pickup_date", "pickup date")))
def rent_car(args, rng):
    car_type = args.get("car_type", "compact")
    daily = rng.uniform(28, 60) * {"compact": 1.0, "sedan": 1.3, "suv": 1.8, "van": 2.0}[car_type]
    young_fee = 15.0 if args.get("driver_age", 30) < 25 else 0.0
    return {"rental_id": vocab.code(rng, "CR", 6), "car_model": rng.choice(vocab.CAR_MODELS[car_type]),
            "pickup_location": f"{args['pickup_city']} {rng.choice(['Airport', 'Central Station'])}",
            "daily_rate": vocab.money(daily + young_fee),
            "total_price": vocab.money((daily + young_fee) * args["days"])}


ADVISORY_LEVELS = {1: "exercise normal caution", 2: "exercise increased caution",
                   3: "reconsider travel", 4: "do not travel"}


@tool("get_travel_advisory", ask="check the travel safety level", params={"country": "for {}"},
      label="travel safety in {country}", mistakes=(misspelled_country("country"),))
def get_travel_advisory(args, rng):
    level = rng.choices([1, 2, 3, 4], weights=[6, 3, 1, 0.3])[0]
    return {"country": args["country"], "level": level, "advice": ADVISORY_LEVELS[level],
            "visa_required": rng.random() < 0.4, "updated": vocab.day(rng)}
