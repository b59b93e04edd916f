"""Token auth with FastAPI's HTTPBearer; the token comes from the secret `my-web-auth-token`.

cove secret create my-web-auth-token AUTH_TOKEN=secret-random-token
curl -H "Authorization: Bearer secret-random-token" <url>
"""

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cove import App, Secret, web_endpoint

app = App("auth-example")

auth_scheme = HTTPBearer()


@app.function(secrets=[Secret.from_name("my-web-auth-token")])
@web_endpoint()
async def f(request: Request, token: HTTPAuthorizationCredentials = Depends(auth_scheme)):
    import os

    if token.credentials != os.environ["AUTH_TOKEN"]:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )

    # Function body
    return "success!"
