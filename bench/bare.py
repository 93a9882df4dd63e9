"""The framework ceiling: a bare Litestar JSON endpoint, served exactly like the authority."""

import gc

from litestar import Litestar, get


@get("/bare", sync_to_thread=False)
def bare() -> dict[str, str]:
    return {"token": "x"}


app = Litestar([bare], logging_config=None, openapi_config=None)
gc.collect()  # the garbage collector set as the authority's entry point sets it (app.freeze_startup): one ceiling
gc.freeze()
