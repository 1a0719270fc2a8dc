"""examples/order-quote.yaml written in Python with the SDK's builder (docs/sdk.md).

``python examples/order_quote.py`` prints the YAML it is equal to; ``order_quote()`` is what a
program registers (``RefluxClient().register_workflow(order_quote())``).
"""

from __future__ import annotations

from reflux.sdk import Input, Retry, Workflow, input_ref


def order_quote() -> Workflow:
    wf = Workflow(
        "order_quote",
        description="Quote an order from a supplier's offers; large orders need an approval call.",
        inputs={
            "city": Input("string", required=True),
            "quantity": Input("integer", default=10),
            "service": Input("string", required=True, description="Base URL of the offers service"),
        },
        defaults_retry=Retry(max_attempts=3, initial_backoff="100ms"),
        defaults_timeout="10s",
    )
    offers = wf.step(
        "offers",
        "http.request@^1",
        params={
            "url": f"{input_ref('service')}/offers",
            "query": {"city": input_ref("city"), "quantity": input_ref("quantity")},
        },
    )
    body = offers.ref("body")
    # Fan-out: three independent analyses of the same offers.
    analyses = {
        "cheapest": "min_by(offers, &price)",
        "fastest": "min_by(offers, &days)",
        "suppliers": "length(offers)",
    }
    cheapest, fastest, suppliers = (
        wf.step(name, "transform@^1", needs=offers, params={"expression": expr, "data": body})
        for name, expr in analyses.items()
    )
    # Condition: only expensive orders call the approval service; the other branch is skipped.
    price = cheapest.expr("result.price")
    wf.step(
        "approval",
        "http.request@^1",
        needs=cheapest,
        when=f"{price} > `100`",
        params={
            "url": f"{input_ref('service')}/approvals",
            "method": "POST",
            "json": {
                "supplier": cheapest.ref("result.supplier"),
                "price": cheapest.ref("result.price"),
            },
        },
    )
    wf.step(
        "auto_approve",
        "condition@^1",
        needs=cheapest,
        when=f"{price} <= `100`",
        params={"value": True},
    )
    # Fan-in: the quote.
    quote = wf.step(
        "quote",
        "transform@^1",
        needs=[cheapest, fastest, suppliers],
        params={
            "expression": "{best: cheapest.supplier, price: cheapest.price, "
            "fastest: fastest.supplier, compared: n}",
            "data": {
                "cheapest": cheapest.ref("result"),
                "fastest": fastest.ref("result"),
                "n": suppliers.ref("result"),
            },
        },
    )
    return wf.output("quote", quote.ref("result"))


if __name__ == "__main__":
    print(order_quote().to_yaml(), end="")
