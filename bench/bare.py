"""The framework ceiling: a bare Litestar JSON endpoint, served exactly like the authority."""

from litestar import Litestar, get


@get("/bare", sync_to_thread=False)
def bare() -> dict[str, str]:
    return {"token": "x"}


app = Litestar([bare], logging_config=None, openapi_config=None)
