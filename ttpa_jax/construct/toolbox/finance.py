"""Simulated finance tools: stock and crypto prices, currency conversion, loans, bank accounts."""

from __future__ import annotations

import random

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.mistakes import as_fraction, misspell, same_as, unissued
from ttpa_jax.construct.toolbox.registry import ToolError, registrar, stable_rng

tool = registrar("finance")

# Units of each currency per US dollar; a call perturbs them slightly but deterministically.
USD_RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CHF": 0.88, "CAD": 1.36,
             "AUD": 1.52, "SEK": 10.6, "NOK": 10.8, "INR": 83.2}
TICKERS = ["ACME", "GLOBX", "NOVA", "ZENO", "ORBT", "KITE", "LUMA", "PYRA", "VEGA", "HELIX"]


def _rate(base: str, quote: str, day: str = "latest") -> float:
    """Units of ``quote`` per unit of ``base``; stable for a (base, quote, day) triple."""
    wobble = stable_rng("fx", [base, quote, day]).uniform(0.985, 1.015)
    return USD_RATES[quote] / USD_RATES[base] * (wobble if base != quote else 1.0)


def _distinct_currencies(rng: random.Random, a: str, b: str) -> dict:
    first, second = rng.sample(sorted(USD_RATES), 2)
    return {a: first, b: second}


def _distinct_accounts(rng: random.Random) -> dict:
    return {"from_account": vocab.code(rng, "ACC", 6), "to_account": vocab.code(rng, "ACC", 6)}


@tool("get_stock_quote", ask="get the share price", params={"symbol": "of {}"},
      label="{symbol} shares", values={"symbol": TICKERS},
      mistakes=(misspell("symbol", TICKERS, "unknown symbol {!r}"),))
def get_stock_quote(args, rng):
    price = vocab.money(rng.uniform(8, 900))
    return {"symbol": args["symbol"], "price": price, "currency": "USD",
            "change_percent": round(rng.uniform(-6, 6), 2), "volume": rng.randint(10_000, 9_000_000)}


@tool("convert_currency", ask="convert",
      params={"amount": "{}", "from_currency": "{}", "to_currency": "to {}"},
      label="{amount} {from_currency} in {to_currency}",
      values={"amount": lambda rng: rng.choice([rng.randint(5, 5000), vocab.money(rng.uniform(5, 900))])},
      joint=lambda rng: _distinct_currencies(rng, "from_currency", "to_currency"),
      mistakes=(same_as("to_currency", "from_currency"),))
def convert_currency(args, rng):
    if args["from_currency"] == args["to_currency"]:
        raise ToolError("source and target currency are the same")
    rate = _rate(args["from_currency"], args["to_currency"])
    return {"amount": args["amount"], "from_currency": args["from_currency"],
            "to_currency": args["to_currency"], "rate": round(rate, 4),
            "converted_amount": vocab.money(args["amount"] * rate)}


@tool("get_exchange_rate", ask="get the exchange rate",
      params={"base_currency": "from {}", "quote_currency": "to {}", "date": "on {}"},
      label="the {base_currency} to {quote_currency} rate",
      joint=lambda rng: _distinct_currencies(rng, "base_currency", "quote_currency"),
      mistakes=(same_as("quote_currency", "base_currency"),))
def get_exchange_rate(args, rng):
    if args["base_currency"] == args["quote_currency"]:
        raise ToolError("base and quote currency are the same")
    day = args.get("date", "latest")
    rate = _rate(args["base_currency"], args["quote_currency"], day)
    return {"base_currency": args["base_currency"], "quote_currency": args["quote_currency"],
            "rate": round(rate, 4), "inverse_rate": round(1 / rate, 4),
            "as_of": day if day != "latest" else vocab.day(rng)}


@tool("calculate_loan_payment", ask="work out the monthly payment",
      params={"principal": "on a loan of {}", "annual_rate": "at {} percent a year",
              "term_months": "over {} months"},
      label="the loan of {principal}",
      values={"principal": lambda rng: rng.choice([5000, 12000, 25000, 180000, 320000]),
              "annual_rate": lambda rng: rng.choice([2.5, 3.9, 4.75, 6.2, 8.0]),
              "term_months": lambda rng: rng.choice([12, 36, 60, 180, 360])},
      mistakes=(as_fraction("annual_rate", "annual rate"),))
def calculate_loan_payment(args, rng):
    p, n = args["principal"], args["term_months"]
    r = args["annual_rate"] / 100 / 12
    payment = p / n if r == 0 else p * r / (1 - (1 + r) ** -n)
    return {"monthly_payment": vocab.money(payment), "total_paid": vocab.money(payment * n),
            "total_interest": vocab.money(payment * n - p)}


@tool("get_account_balance", ask="check the balance", params={"account_id": "of account {}"},
      label="account {account_id}", values={"account_id": lambda rng: vocab.code(rng, "ACC", 6)},
      mistakes=(unissued("account_id", "account"),))
def get_account_balance(args, rng):
    balance = vocab.money(rng.uniform(-200, 25000))
    return {"account_id": args["account_id"], "balance": balance, "currency": "USD",
            "available": vocab.money(max(0.0, balance - rng.uniform(0, 300)))}


@tool("transfer_funds", ask="send",
      params={"amount": "{} dollars", "from_account": "from {}", "to_account": "to {}",
              "memo": "with the note \"{}\""},
      label="the transfer of {amount} dollars",
      values={"amount": lambda rng: rng.choice([25, 60, 150, 480, 1200]), "memo": vocab.MEMOS},
      joint=_distinct_accounts,
      mistakes=(unissued("from_account", "account"), unissued("to_account", "account"),
                same_as("to_account", "from_account")))
def transfer_funds(args, rng):
    if args["from_account"] == args["to_account"]:
        raise ToolError("cannot transfer to the same account")
    fee = 0.0 if args["amount"] < 1000 else vocab.money(args["amount"] * 0.001)
    return {"transaction_id": "TX" + vocab.letters(rng, 8), "status": "completed",
            "amount": args["amount"], "fee": fee,
            "new_balance": vocab.money(rng.uniform(args["amount"], 20000) - args["amount"] - fee)}


COIN_USD = {"bitcoin": 64000.0, "ethereum": 3100.0, "solana": 145.0, "cardano": 0.45, "dogecoin": 0.15}


@tool("get_crypto_price", ask="check the price", params={"coin": "of {}", "currency": "in {}"},
      label="{coin}")
def get_crypto_price(args, rng):
    currency = args.get("currency", "USD")
    price = COIN_USD[args["coin"]] * rng.uniform(0.9, 1.1) * USD_RATES[currency]
    return {"coin": args["coin"], "currency": currency,
            "price": round(price, 2 if price >= 1 else 4),
            "change_24h_percent": round(rng.uniform(-9, 9), 2),
            "market_cap_billions": round(price / USD_RATES[currency] * rng.uniform(0.5, 20), 1)}
