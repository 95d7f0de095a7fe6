"""Simulated food tools: restaurants, table bookings, recipes, nutrition, delivery, wine."""

from __future__ import annotations

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import misspell, misspelled_city, stale_date, unissued
from ttpa_jax.construct.toolbox.registry import registrar, stable_rng

tool = registrar("food")

# Per 100 g: calories, protein, carbohydrate, fat.
NUTRITION = {"oats": (389, 16.9, 66.3, 6.9), "brown rice": (112, 2.3, 23.5, 0.8),
             "banana": (89, 1.1, 22.8, 0.3), "almonds": (579, 21.2, 21.6, 49.9),
             "salmon": (208, 20.4, 0.0, 13.4), "lentils": (116, 9.0, 20.1, 0.4),
             "greek yogurt": (59, 10.2, 3.6, 0.4), "broccoli": (34, 2.8, 6.6, 0.4),
             "chicken breast": (165, 31.0, 0.0, 3.6), "avocado": (160, 2.0, 8.5, 14.7)}
INGREDIENTS = ["olive oil", "garlic", "onion", "tomato", "rice", "basil", "ginger", "lemon", "cumin",
               "chickpeas", "butter", "parmesan", "coconut milk", "spinach", "flour", "eggs"]
WINES = [("Vinho Verde", "Alvarinho", "Minho"), ("Chianti Classico", "Sangiovese", "Tuscany"),
         ("Sancerre", "Sauvignon Blanc", "Loire"), ("Rioja Crianza", "Tempranillo", "Rioja"),
         ("Riesling Kabinett", "Riesling", "Mosel"), ("Cotes du Rhone", "Grenache", "Rhone")]
CUISINE_WORDS = {"italian": "Trattoria", "japanese": "Izakaya", "mexican": "Cantina", "indian": "Tandoor",
                 "french": "Bistro", "thai": "Baan", "vegan": "Greenhouse"}


def _restaurant_id(rng) -> str:
    return vocab.code(rng, "RS", 4)


def _items_phrase(items: list[dict]) -> str:
    return " and ".join(f"{item['quantity']} {item['name']}" for item in items)


@tool("search_restaurants", ask="find a restaurant",
      params={"city": "in {}", "cuisine": "serving {} food", "budget": "in price tier {}",
              "open_now": ("that is serving right now", "whether serving or not")},
      label="restaurants in {city}", mistakes=(misspelled_city("city"),))
def search_restaurants(args, rng):
    cuisine = args.get("cuisine", rng.choice(sorted(CUISINE_WORDS)))
    restaurants = sorted(({"restaurant_id": _restaurant_id(rng),
                           "name": f"{CUISINE_WORDS[cuisine]} {rng.choice(vocab.PLACE_WORDS)}",
                           "rating": round(rng.uniform(3.4, 4.9), 1),
                           "tier": args.get("budget", rng.randint(1, 4))}
                          for _ in range(rng.randint(2, 3))), key=lambda r: -r["rating"])
    return {"city": args["city"], "cuisine": cuisine, "count": len(restaurants), "restaurants": restaurants}


@tool("book_table", ask="reserve a table",
      params={"restaurant_id": "at restaurant {}", "date": "on {}", "time": "at {}",
              "party_size": "for {} people", "note": "noting \"{}\""},
      chained={"restaurant_id": "at the top rated restaurant found"}, label="the table on {date}",
      values={"restaurant_id": _restaurant_id, "note": vocab.TABLE_NOTES,
              "time": lambda rng: vocab.clock(rng, 12, 21), "party_size": lambda rng: rng.randint(1, 8)},
      mistakes=(unissued("restaurant_id", "restaurant"), stale_date("date", "date")))
def book_table(args, rng):
    return {"reservation_id": vocab.code(rng, "RV", 6), "status": "confirmed",
            "table_number": rng.randint(1, 40), "time": args["time"],
            "hold_minutes": rng.choice([10, 15, 20])}


@tool("get_recipe", ask="find a recipe", params={"dish": "for {}", "servings": "serving {}", "diet": "that is {}"},
      label="the {dish} recipe", values={"dish": vocab.DISHES, "servings": lambda rng: rng.randint(1, 8)},
      mistakes=(misspell("dish", vocab.DISHES, "no recipe for {!r}"),))
def get_recipe(args, rng):
    servings = args.get("servings", 4)
    return {"dish": args["dish"], "servings": servings, "prep_minutes": rng.choice([10, 15, 20, 30]),
            "cook_minutes": rng.choice([15, 25, 40, 60, 90]),
            "calories_per_serving": rng.randint(250, 850),
            "ingredients": rng.sample(INGREDIENTS, rng.randint(4, 7))}


@tool("get_nutrition_facts", ask="look up the nutrition", params={"food": "of {}", "grams": "for {} grams"},
      label="{grams} g of {food}", values={"food": vocab.FOODS, "grams": lambda rng: rng.choice([50, 100, 150, 250])},
      mistakes=(misspell("food", vocab.FOODS, "unknown food {!r}"),))
def get_nutrition_facts(args, rng):
    per100 = NUTRITION.get(args["food"].strip().lower())
    if per100 is None:  # unknown foods get stable made-up values
        r = stable_rng("nutrition", args["food"].strip().lower())
        per100 = (r.randint(40, 500), round(r.uniform(0, 30), 1), round(r.uniform(0, 70), 1),
                  round(r.uniform(0, 40), 1))
    scale = args["grams"] / 100
    calories, protein, carbs, fat = (x * scale for x in per100)
    return {"food": args["food"], "grams": args["grams"], "calories": round(calories),
            "protein_g": round(protein, 1), "carbs_g": round(carbs, 1), "fat_g": round(fat, 1)}


@tool("order_food_delivery", ask="order",
      params={"restaurant_id": "from restaurant {}", "items": _items_phrase, "address": "delivered to {}",
              "tip": "with a {} dollar tip"},
      chained={"restaurant_id": "from the top rated restaurant found"}, label="your order",
      values={"restaurant_id": _restaurant_id, "address": vocab.address,
              "tip": lambda rng: rng.choice([2, 3, 5, 8]),
              "items": lambda rng: [{"name": dish, "quantity": rng.randint(1, 3)}
                                    for dish in rng.sample(vocab.DISHES, rng.randint(1, 2))]},
      mistakes=(unissued("restaurant_id", "restaurant"),))
def order_food_delivery(args, rng):
    subtotal = sum(item["quantity"] * stable_rng("menu", item["name"].lower()).uniform(7, 24)
                   for item in args["items"])
    fee = rng.choice([0.0, 2.99, 4.49])
    return {"order_id": vocab.code(rng, "ORD", 6), "eta_minutes": rng.randint(20, 65),
            "subtotal": vocab.money(subtotal), "delivery_fee": fee,
            "total": vocab.money(subtotal + fee + args.get("tip", 0))}


@tool("get_wine_pairing", ask="suggest a wine", params={"dish": "to go with {}", "max_price": "under {} dollars"},
      label="a wine for {dish}", values={"dish": vocab.DISHES, "max_price": lambda rng: rng.choice([15, 25, 40, 60])},
      mistakes=(misspell("dish", vocab.DISHES, "unknown dish {!r}"),))
def get_wine_pairing(args, rng):
    wine, grape, region = rng.choice(WINES)
    cap = args.get("max_price", 60)
    return {"wine": wine, "grape": grape, "region": region,
            "bottle_price": vocab.money(rng.uniform(min(8.0, cap * 0.6), cap))}
