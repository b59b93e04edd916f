"""A Flask app served with @wsgi_app: GET / greets, POST /echo returns the JSON body."""

from cove import App, Image, wsgi_app

app = App()
image = Image.debian_slim().pip_install("flask")


@app.function(image=image)
@wsgi_app()
def flask_app():
    from flask import Flask, request

    web_app = Flask(__name__)

    @web_app.get("/")
    def home():
        return "Hello Flask World!"

    @web_app.post("/echo")
    def echo():
        return request.json

    return web_app
