"""Simulated shopping tools: catalogue search, basket, coupons, order tracking, returns."""

from __future__ import annotations

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import misspell, unissued
from ttpa_jax.construct.toolbox.registry import registrar, stable_rng

tool = registrar("shopping")

PRODUCT_NOUNS = ["Pro", "Lite", "Max", "Classic", "Go", "Plus"]


def _product_id(rng) -> str:
    return vocab.code(rng, "PR", 5)


def _product(product_id: str) -> dict:
    """A catalogue entry; the same id always describes the same product."""
    rng = stable_rng("catalogue", product_id)
    name = f"{rng.choice(vocab.PRODUCT_QUERIES).title()} {rng.choice(PRODUCT_NOUNS)}"
    return {"product_id": product_id, "name": name, "price": vocab.money(rng.uniform(6, 400)),
            "rating": round(rng.uniform(2.8, 5.0), 1)}


def _order_id(rng) -> str:
    return vocab.code(rng, "ORD", 6)


@tool("search_products", ask="search the store",
      params={"query": "for {}", "category": "in the {} department", "max_price": "under {} dollars",
              "sort_by": "sorted by {}",
              "in_stock_only": ("showing only items on the shelf", "including sold-out items")},
      label="the search for {query}",
      values={"query": vocab.PRODUCT_QUERIES, "max_price": lambda rng: rng.choice([20, 50, 100, 250])},
      mistakes=(misspell("query", vocab.PRODUCT_QUERIES, "no products match {!r}"),))
def search_products(args, rng):
    cap = args.get("max_price", 400)
    products = []
    for _ in range(rng.randint(2, 3)):
        entry = _product(_product_id(rng))
        entry["price"] = vocab.money(min(entry["price"], cap * rng.uniform(0.5, 0.99)))
        products.append(entry)
    key = {"price": lambda p: p["price"], "rating": lambda p: -p["rating"]}.get(args.get("sort_by", ""))
    if key:
        products.sort(key=key)
    return {"query": args["query"], "count": len(products), "products": products}


@tool("get_product_details", ask="show the details", params={"product_id": "of product {}"},
      chained={"product_id": "of the first product found"}, label="product {product_id}",
      values={"product_id": _product_id}, mistakes=(unissued("product_id", "product"),))
def get_product_details(args, rng):
    entry = _product(args["product_id"])
    entry.update(stock=rng.randint(0, 250), warranty_months=rng.choice([0, 6, 12, 24]),
                 ships_in_days=rng.randint(1, 7))
    return entry


@tool("add_to_cart", ask="add", params={"quantity": "{} of", "product_id": "product {} to my basket"},
      chained={"product_id": "the first product found to my basket"}, label="your basket",
      values={"product_id": _product_id, "quantity": lambda rng: rng.randint(1, 4)},
      mistakes=(unissued("product_id", "product"),))
def add_to_cart(args, rng):
    quantity = args.get("quantity", 1)
    line = vocab.money(_product(args["product_id"])["price"] * quantity)
    return {"cart_id": "CT" + vocab.letters(rng, 6), "product_id": args["product_id"],
            "quantity": quantity, "line_total": line,
            "cart_total": vocab.money(line + rng.choice([0, 0, rng.uniform(5, 120)]))}


@tool("track_order", ask="find out where", params={"order_id": "order {} is"},
      label="order {order_id}", values={"order_id": _order_id}, mistakes=(unissued("order_id", "order"),))
def track_order(args, rng):
    status = rng.choice(["processing", "shipped", "in transit", "out for delivery", "delivered"])
    return {"order_id": args["order_id"], "status": status, "carrier": rng.choice(vocab.CARRIERS),
            "last_location": rng.choice(vocab.CITIES), "estimated_delivery": vocab.day(rng)}


@tool("apply_coupon", ask="try", params={"coupon_code": "the code {}", "cart_total": "on a total of {} dollars"},
      chained={"cart_total": "on the basket total"}, label="code {coupon_code}",
      values={"coupon_code": vocab.COUPONS,
              "cart_total": lambda rng: vocab.money(rng.uniform(15, 400))},
      mistakes=(misspell("coupon_code", vocab.COUPONS, "unknown coupon code {!r}"),))
def apply_coupon(args, rng):
    valid = rng.random() < 0.7
    percent = rng.choice([5, 10, 15, 20]) if valid else 0
    discount = vocab.money(args["cart_total"] * percent / 100)
    return {"coupon_code": args["coupon_code"], "valid": valid, "percent_off": percent,
            "discount": discount, "new_total": vocab.money(args["cart_total"] - discount)}


@tool("compare_prices", ask="see which shop is cheapest", params={"product_name": "for {}", "stores": "among {}"},
      label="the {product_name}",
      values={"product_name": vocab.PRODUCT_QUERIES,
              "stores": lambda rng: sorted(rng.sample(vocab.STORES, rng.randint(2, 4)))},
      mistakes=(misspell("product_name", vocab.PRODUCT_QUERIES, "no product matches {!r}"),))
def compare_prices(args, rng):
    base = rng.uniform(10, 300)
    offers = sorted(({"store": s, "price": vocab.money(base * rng.uniform(0.85, 1.2))}
                     for s in args.get("stores", vocab.STORES)), key=lambda o: o["price"])
    return {"product_name": args["product_name"], "best_store": offers[0]["store"],
            "best_price": offers[0]["price"], "offers": offers}


@tool("return_item", ask="start a return",
      params={"order_id": "for order {}", "reason": "because it is {}", "refund_method": "refunded as {}"},
      label="the return of order {order_id}", values={"order_id": _order_id},
      mistakes=(unissued("order_id", "order"),))
def return_item(args, rng):
    refund = vocab.money(rng.uniform(8, 300))
    if args["reason"] == "unwanted":
        refund = vocab.money(refund * 0.9)  # restocking fee for change of mind
    return {"return_id": vocab.code(rng, "RT", 6), "order_id": args["order_id"],
            "refund_amount": refund, "refund_method": args.get("refund_method", "card"),
            "drop_off_by": vocab.day(rng)}
