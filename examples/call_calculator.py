"""Call the deployed `calculator` app from any Python program, as Modal's client library does.

Run `cove deploy examples/calculator.py` first. On another machine, point the client at the server:
COVE_SERVER_URL=http://host:9000 COVE_TOKEN=<from `cove token create`> (server: `cove server --listen`).
"""

import asyncio

import cove

add = cove.Function.from_name("calculator", "add")
print("add(2, 3) =", add.remote(2, 3))

call = add.spawn(40, 2)
print("spawned", call.object_id, "->", cove.FunctionCall.from_id(call.object_id).get(timeout=30))

try:
    cove.Function.from_name("calculator", "divide").remote(1, 0)
except ZeroDivisionError as exc:
    print("remote error re-raised locally:", repr(exc))

Stats = cove.Cls.from_name("calculator", "Stats")
print("mean =", Stats().mean.remote([1.0, 2.0, 6.0]))


async def main() -> None:
    print("async add =", await add.remote.aio(1, 1))


asyncio.run(main())
