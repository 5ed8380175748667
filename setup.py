"""Build hook for the optional native send path (metadata lives in pyproject.toml).

`media/transport/_fastpath.c` (the outbox: SRTP protect, sendmmsg and UDP GSO; the RTX ring;
the lanes) and
`media/bwe/_trendfit.c` (the estimator's trendline fit) are compiled with the
machine's C compiler on install. They are optional: without a compiler, or off Linux, the
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
                "media/transport/_outbox.c",
                "media/transport/_rtx_ring.c",
                "media/transport/_lane.c",
            ],
            depends=["media/transport/_fastpath.h"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    )
    # The trendline's slope (media/bwe/trendline.py); no fused multiply-add, so its
    # floats are Python's to the bit.
    ext_modules.append(
        Extension(
            "media.bwe._trendfit",
            sources=["media/bwe/_trendfit.c"],
            optional=True,
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
    )

setup(ext_modules=ext_modules)
