"""A class with @enter/@exit hooks and a web method: the model loads once per container."""

import cove

app = cove.App("lifecycle")


@app.cls(scaledown_window=60)
@cove.concurrent(max_inputs=4)
class Model:
    @cove.enter()
    def load(self):
        self.weights = {"greeting": "hello"}
        self.calls = 0

    @cove.fastapi_endpoint()
    def predict(self, name: str = "world"):
        self.calls += 1
        return {"text": f"{self.weights['greeting']} {name}", "calls": self.calls}

    @cove.exit()
    def unload(self):
        print("unloading model")
