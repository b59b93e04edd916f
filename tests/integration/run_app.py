"""An app in Modal's style for `cove run`: a local entrypoint and plain functions (test_run.py)."""

import modal

app = modal.App("runner")


@app.function()
def square(x: int) -> int:
    print(f"squaring {x} in a container")
    return x * x


@app.function()
def shout(word: str, times: int = 2, loud: bool = False) -> str:
    text = " ".join([word.upper() if loud else word] * times)
    print(f"shouted: {text}")
    return text


@app.local_entrypoint()
def main(n: int, label: str = "result", twice: bool = False) -> None:
    value = square.remote(n)
    if twice:
        value = square.remote(value)
    print(f"{label}: {value}")
