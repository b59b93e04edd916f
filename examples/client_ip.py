"""The function sees the address of the client that called the gateway."""

from fastapi import Request

from cove import App, web_endpoint

app = App()


@app.function()
@web_endpoint()
def get_ip_address(request: Request):
    return f"Your IP address is {request.client.host}"
