"""Build hook for the optional native send path (metadata lives in pyproject.toml).

`media/transport/_fastpath.c` (SRTP protect + sendmmsg per batch, the RTX ring, video lanes) is compiled with the
machine's C compiler on install. It is optional: without a compiler, or off Linux, the
build goes on without it and Ferry uses its pure-Python send path (reported at start
and in /metrics).
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "media.transport._fastpath",
            sources=[
                "media/transport/_fastpath.c",
                "media/transport/_rtx_ring.c",
                "media/transport/_lane.c",
            ],
            depends=["media/transport/_fastpath.h"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    )

setup(ext_modules=ext_modules)
