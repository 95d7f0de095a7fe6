"""Simulated health and fitness tools: BMI, workouts, steps, doctors, appointments, hydration."""

from __future__ import annotations

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import misspelled_city, stale_date, unissued
from ttpa_jax.construct.toolbox.registry import registrar

tool = registrar("health")

# Calories per minute for a 70 kg person.
BURN_RATE = {"running": 11.0, "cycling": 8.5, "swimming": 9.5, "walking": 4.5, "yoga": 3.5, "rowing": 8.0}


def _weight(rng) -> float:
    return round(rng.uniform(45, 110), 1)


@tool("calculate_bmi", ask="work out the BMI",
      params={"weight_kg": "for someone weighing {} kg", "height_cm": "and {} cm tall"},
      label="the BMI", values={"weight_kg": _weight, "height_cm": lambda rng: rng.randint(150, 200)})
def calculate_bmi(args, rng):
    bmi = args["weight_kg"] / (args["height_cm"] / 100) ** 2
    category = ("underweight" if bmi < 18.5 else "normal" if bmi < 25 else "overweight" if bmi < 30
                else "obese")
    return {"bmi": round(bmi, 1), "category": category}


@tool("log_workout", ask="record a workout",
      params={"activity": "of {}", "duration_minutes": "lasting {} minutes", "distance_km": "covering {} km",
              "date": "on {}"},
      label="the {activity} workout",
      values={"duration_minutes": lambda rng: rng.choice([20, 30, 45, 60, 90]),
              "distance_km": lambda rng: round(rng.uniform(1, 40), 1)})
def log_workout(args, rng):
    calories = BURN_RATE[args["activity"]] * args["duration_minutes"] * rng.uniform(0.9, 1.1)
    result = {"workout_id": vocab.code(rng, "WK", 6), "calories_burned": round(calories)}
    if args.get("distance_km"):
        result["pace_min_per_km"] = round(args["duration_minutes"] / args["distance_km"], 2)
    return result


@tool("get_step_count", ask="check how many steps I took", params={"date": "on {}"},
      label="your steps on {date}")
def get_step_count(args, rng):
    steps = rng.randint(1500, 18000)
    return {"date": args["date"], "steps": steps, "distance_km": round(steps * 0.00075, 2),
            "goal_reached": steps >= 10000}


@tool("find_doctor", ask="look for a specialist",
      params={"specialty": "in {}", "city": "in {}",
              "accepts_new_patients": ("who takes on newcomers", "whether or not taking newcomers")},
      label="{specialty} in {city}", mistakes=(misspelled_city("city"),))
def find_doctor(args, rng):
    doctors = sorted(({"doctor_id": vocab.code(rng, "DR", 4), "name": f"Dr. {vocab.person(rng)}",
                       "rating": round(rng.uniform(3.5, 5.0), 1), "next_available": vocab.day(rng)}
                      for _ in range(rng.randint(2, 3))), key=lambda d: -d["rating"])
    return {"specialty": args["specialty"], "city": args["city"], "count": len(doctors), "doctors": doctors}


@tool("book_appointment", ask="make an appointment",
      params={"doctor_id": "with doctor {}", "date": "on {}", "time": "at {}", "reason": "about {}"},
      chained={"doctor_id": "with the top rated doctor found"}, label="the appointment on {date}",
      values={"doctor_id": lambda rng: vocab.code(rng, "DR", 4), "reason": vocab.VISIT_REASONS,
              "time": lambda rng: vocab.clock(rng, 8, 17)},
      mistakes=(unissued("doctor_id", "doctor"), stale_date("date", "date")))
def book_appointment(args, rng):
    return {"appointment_id": vocab.code(rng, "AP", 6), "status": "booked", "date": args["date"],
            "time": args["time"], "room": f"{rng.randint(1, 4)}{rng.randint(1, 20):02d}"}


@tool("calculate_water_intake", ask="estimate the daily water needs",
      params={"weight_kg": "for someone weighing {} kg", "activity_minutes": "active {} minutes a day",
              "climate": "in a {} climate"},
      label="the daily water needs", values={"weight_kg": _weight,
                                             "activity_minutes": lambda rng: rng.choice([0, 20, 30, 60, 90])})
def calculate_water_intake(args, rng):
    liters = args["weight_kg"] * 0.033 + args.get("activity_minutes", 0) / 30 * 0.35
    liters *= {"temperate": 1.0, "hot": 1.2, "cold": 0.95}[args.get("climate", "temperate")]
    return {"liters_per_day": round(liters, 2), "glasses": round(liters / 0.25)}
