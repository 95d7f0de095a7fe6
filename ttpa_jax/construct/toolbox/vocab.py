"""Word pools shared by the simulated tools (for their results) and the template generator (for
argument values). All names are made up for this project."""

from __future__ import annotations

import datetime as dt
import random

# The simulated today: drawn dates start here, and bookings before it are in the past.
TODAY = dt.date(2025, 1, 1)
CITIES = ["Lyon", "Oslo", "Lisbon", "Denver", "Osaka", "Nairobi", "Toronto", "Seville", "Krakow",
          "Austin", "Porto", "Dublin", "Kyoto", "Quito", "Perth", "Tallinn", "Boston", "Vienna",
          "Seoul", "Lima", "Cairo", "Helsinki", "Montreal", "Bergen"]
COUNTRIES = ["France", "Norway", "Portugal", "Japan", "Kenya", "Canada", "Spain", "Poland",
             "Ireland", "Ecuador", "Australia", "Estonia", "Austria", "Peru", "Egypt", "Finland"]
REGIONS = ["Colorado", "Ontario", "Bavaria", "Andalusia", "Hokkaido", "Queensland", "Brittany",
           "Tuscany", "Patagonia", "Scotland"]
FIRST_NAMES = ["Maya", "Omar", "Lena", "Jonas", "Priya", "Tomas", "Aiko", "Felix", "Nadia", "Hugo",
               "Sara", "Diego", "Ingrid", "Kofi", "Elena", "Ravi"]
LAST_NAMES = ["Chen", "Haddad", "Novak", "Berg", "Sharma", "Silva", "Tanaka", "Weber", "Okafor",
              "Moreau", "Lindqvist", "Garcia", "Petrov", "Mensah", "Rossi", "Kaur"]
STREETS = ["Elm Street", "Harbor Road", "Maple Avenue", "Station Square", "River Lane", "Oak Drive",
           "Market Street", "Hill Road", "Park Avenue", "Mill Lane"]
LANDMARKS = ["Central Station", "City Museum", "Old Town Square", "Harbor Bridge", "University Library",
             "Botanical Garden", "Main Cathedral", "Olympic Stadium"]
AIRLINES = ["Nordic Air", "Atlas Airways", "Blue Heron", "Pacific Wing", "Sunline", "Aurora Jet"]
HOTEL_WORDS = ["Grand", "Harbor", "Garden", "Central", "Royal", "Riverside", "Summit", "Plaza"]
PLACE_WORDS = ["Corner", "Golden", "Little", "Blue", "Old Mill", "Green", "Sunny", "Lantern"]
STORES = ["Northmart", "ShopLane", "Bazaarly", "CartCo"]
CARRIERS = ["SwiftPost", "ParcelOne", "RoadRunner Freight", "GlobeShip"]
CAR_MODELS = {"compact": ["Zeta Mini", "Koda Pop"], "sedan": ["Volta Line", "Corsa Eight"],
              "suv": ["Ranger Trail", "Atlas Cross"], "van": ["Cargo Plus", "Family Nine"]}
WEATHER_CONDITIONS = ["sunny", "partly cloudy", "cloudy", "light rain", "showers", "windy", "foggy",
                      "snow"]
PRODUCT_QUERIES = ["wireless headphones", "running shoes", "coffee grinder", "desk lamp", "yoga mat",
                   "board game", "rain jacket", "water bottle", "phone charger", "cookbook"]
DISHES = ["lasagna", "pad thai", "mushroom risotto", "chicken curry", "fish tacos", "ramen",
          "vegetable paella", "beef stew", "falafel wrap", "pancakes"]
FOODS = ["oats", "brown rice", "banana", "almonds", "salmon", "lentils", "greek yogurt", "broccoli",
         "chicken breast", "avocado"]
EVENT_TITLES = ["Team sync", "Dentist visit", "Budget review", "Book club", "Yoga class",
                "Project kickoff", "Parent meeting", "Lunch with Sam"]
REMINDER_TEXTS = ["call the plumber", "pay the rent", "water the plants", "renew the passport",
                  "pick up the dry cleaning", "book a haircut", "send the invoice"]
EMAIL_SUBJECTS = ["Trip plans", "Meeting notes", "Invoice attached", "Weekend dinner",
                  "Quarterly report", "Quick question"]
MESSAGE_TEXTS = ["I will be ten minutes late", "The report is ready", "See you at the station",
                 "Dinner is at seven", "Please call me back", "The meeting moved to Friday"]
CHANNELS = ["#design-team", "#dev-ops", "#general", "#marketing", "#support-desk", "#travel-club"]
VISIT_REASONS = ["annual checkup", "knee pain", "skin rash", "follow-up visit", "blood test results"]
TABLE_NOTES = ["window table please", "birthday dinner", "high chair needed", "quiet corner please"]
MEMOS = ["rent share", "concert tickets", "birthday gift", "shared groceries", "loan repayment"]
COUPONS = ["SPRING15", "SAVE10", "WELCOME5", "FALL2025", "FREESHIP", "VIP20"]
MAIL_DOMAINS = ("example.com",)
HOLIDAYS = [("New Year's Day", 1, 1), ("Spring Festival", 3, 21), ("Labour Day", 5, 1),
            ("Midsummer Day", 6, 24), ("Harvest Day", 9, 22), ("Remembrance Day", 11, 11),
            ("Winter Holiday", 12, 25)]


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def email(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES).lower()}.{rng.choice(LAST_NAMES).lower()}@{MAIL_DOMAINS[0]}"


def address(rng: random.Random) -> str:
    return f"{rng.randint(1, 99)} {rng.choice(STREETS)}, {rng.choice(CITIES)}"


def day(rng: random.Random, start: dt.date = TODAY, span: int = 540) -> str:
    return (start + dt.timedelta(days=rng.randrange(span))).isoformat()


def clock(rng: random.Random, lo_hour: int = 7, hi_hour: int = 20) -> str:
    return f"{rng.randint(lo_hour, hi_hour):02d}:{rng.choice([0, 15, 30, 45]):02d}"


def code(rng: random.Random, prefix: str, digits: int) -> str:
    return f"{prefix}-{rng.randrange(10 ** (digits - 1), 10 ** digits)}"


def letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(n))


def phone(rng: random.Random) -> str:
    return "+" + str(rng.choice([44, 33, 49, 1, 81])) + "".join(str(rng.randrange(10)) for _ in range(10))


def add_minutes(hhmm: str, minutes: int) -> str:
    h, m = map(int, hhmm.split(":"))
    total = (h * 60 + m + minutes) % (24 * 60)
    return f"{total // 60:02d}:{total % 60:02d}"


def money(x: float) -> float:
    return round(x, 2)
