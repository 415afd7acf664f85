"""The estimators under their public name: ``dataspex.estimators.ProxySPEX`` and friends.

They live in :mod:`dataspex.fit.estimators`; this front keeps the name users' code and the ``_target_`` paths of
``conf/estimator/*.yaml`` use.
"""

from dataspex.fit.estimators import *  # noqa: F401,F403 (the public names, listed in its __all__)
from dataspex.fit.estimators import __all__  # noqa: F401
