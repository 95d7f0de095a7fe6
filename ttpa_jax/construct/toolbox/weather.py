"""Simulated weather tools: current conditions, forecasts, air quality, UV, sun times, alerts."""

from __future__ import annotations

import datetime as dt

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import misspell, misspelled_city
from ttpa_jax.construct.toolbox.registry import registrar

tool = registrar("weather")


def _temperature(rng, units: str, lo: float = -5, hi: float = 33) -> float:
    celsius = rng.uniform(lo, hi)
    return round(celsius * 9 / 5 + 32 if units == "imperial" else celsius, 1)


@tool("get_current_weather", ask="check the current weather",
      params={"city": "in {}", "units": "in {} units"}, label="the weather in {city} now",
      mistakes=(misspelled_city("city"),))
def get_current_weather(args, rng):
    units = args.get("units", "metric")
    temperature = _temperature(rng, units)
    return {"city": args["city"], "temperature": temperature,
            "feels_like": round(temperature + rng.uniform(-3, 1), 1),
            "condition": rng.choice(vocab.WEATHER_CONDITIONS), "humidity": rng.randint(25, 95),
            "wind_speed": round(rng.uniform(0, 40 if units == "metric" else 25), 1), "units": units}


@tool("get_weather_forecast", ask="get the forecast",
      params={"city": "for {}", "days": "for the next {} days", "units": "in {} units"},
      label="the forecast for {city}", mistakes=(misspelled_city("city"),))
def get_weather_forecast(args, rng):
    units = args.get("units", "metric")
    start = dt.date.fromisoformat(vocab.day(rng))
    days = []
    for k in range(args["days"]):
        high = _temperature(rng, units, 0, 32)
        days.append({"date": (start + dt.timedelta(days=k)).isoformat(), "high": high,
                     "low": round(high - rng.uniform(4, 11), 1),
                     "condition": rng.choice(vocab.WEATHER_CONDITIONS),
                     "rain_chance": rng.randrange(0, 100, 5)})
    return {"city": args["city"], "units": units, "days": days}


AQI_CATEGORIES = [(50, "good"), (100, "moderate"), (150, "unhealthy for sensitive groups"),
                  (200, "unhealthy"), (500, "very unhealthy")]


@tool("get_air_quality", ask="check the air quality", params={"city": "in {}"},
      label="the air in {city}", mistakes=(misspelled_city("city"),))
def get_air_quality(args, rng):
    aqi = rng.randint(8, 190)
    category = next(name for top, name in AQI_CATEGORIES if aqi <= top)
    return {"city": args["city"], "aqi": aqi, "category": category,
            "main_pollutant": rng.choice(["PM2.5", "PM10", "ozone", "nitrogen dioxide"]),
            "pm25": round(aqi * rng.uniform(0.25, 0.45), 1)}


@tool("get_uv_index", ask="get the UV level",
      params={"latitude": "at latitude {}", "longitude": "and longitude {}", "date": "on {}"},
      chained={"latitude": "at that spot", "longitude": "at that spot"}, label="the UV level there")
def get_uv_index(args, rng):
    base = 11 * (1 - abs(args["latitude"]) / 90)
    uv = round(max(0.0, base * rng.uniform(0.4, 1.0)), 1)
    risk = "low" if uv < 3 else "moderate" if uv < 6 else "high" if uv < 8 else "very high"
    return {"uv_index": uv, "risk": risk, "peak_hour": f"{rng.randint(12, 14)}:00"}


@tool("get_sunrise_sunset", ask="find the sunrise and sunset times",
      params={"city": "for {}", "date": "on {}"}, label="sun times in {city} on {date}",
      mistakes=(misspelled_city("city"),))
def get_sunrise_sunset(args, rng):
    month = dt.date.fromisoformat(args["date"]).month
    season = abs(6.5 - month) / 5.5  # 0 near midsummer, 1 near midwinter (northern hemisphere)
    day_minutes = int(rng.uniform(14.5, 16.5) * 60 * (1 - season) + rng.uniform(8, 9.5) * 60 * season)
    noon = 12 * 60 + rng.randint(-20, 60)
    rise = noon - day_minutes // 2
    return {"city": args["city"], "date": args["date"],
            "sunrise": f"{rise // 60:02d}:{rise % 60:02d}",
            "sunset": vocab.add_minutes(f"{rise // 60:02d}:{rise % 60:02d}", day_minutes),
            "day_length_hours": round(day_minutes / 60, 2)}


ALERT_EVENTS = {"minor": ["fog advisory", "frost advisory"],
                "moderate": ["wind warning", "heavy rain warning", "heat advisory"],
                "severe": ["storm warning", "flood warning", "blizzard warning"]}
SEVERITIES = ["minor", "moderate", "severe"]


@tool("get_weather_alerts", ask="list the weather warnings",
      params={"region": "for {}", "severity": "of {} level or worse"},
      label="the warnings for {region}", values={"region": vocab.REGIONS},
      mistakes=(misspell("region", vocab.REGIONS, "unknown region {!r}"),))
def get_weather_alerts(args, rng):
    allowed = SEVERITIES[SEVERITIES.index(args.get("severity", "minor")):]
    alerts = []
    for _ in range(rng.randint(1, 2)):
        severity = rng.choice(allowed)
        alerts.append({"alert_id": vocab.code(rng, "AL", 5), "event": rng.choice(ALERT_EVENTS[severity]),
                       "severity": severity, "expires": f"{vocab.day(rng)} {vocab.clock(rng)}"})
    return {"region": args["region"], "count": len(alerts), "alerts": alerts}


@tool("get_historical_weather", ask="look up the past weather",
      params={"city": "in {}", "date": "on {}"}, label="the weather in {city} on {date}",
      values={"date": lambda rng: vocab.day(rng, dt.date(2015, 1, 1), 3650)},
      mistakes=(misspelled_city("city"),))
def get_historical_weather(args, rng):
    high = _temperature(rng, "metric", -2, 34)
    return {"city": args["city"], "date": args["date"], "high": high,
            "low": round(high - rng.uniform(3, 12), 1),
            "precipitation_mm": round(rng.choice([0, 0, 0.4, 2.5, 7.1, 15.0]) * rng.uniform(0.5, 1.5), 1)}
