"""A deployed app whose functions are called from other Python programs (see call_calculator.py).

    cove deploy examples/calculator.py
    python examples/call_calculator.py
"""

import cove

app = cove.App("calculator")


@app.function()
def add(a: float, b: float) -> float:
    return a + b


@app.function()
def divide(a: float, b: float) -> float:
    return a / b  # divide(1, 0) raises ZeroDivisionError in the container, re-raised in the caller


@app.cls()
class Stats:
    @cove.enter()
    def load(self):
        self.calls = 0

    @cove.method()
    def mean(self, values: list[float]) -> float:
        self.calls += 1
        return sum(values) / len(values)
