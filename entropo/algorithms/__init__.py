"""Built-in algorithm components; importing this package registers them (see ``entropo.registry``)."""

from entropo.algorithms import advantages, controllers, objectives, regularizers, selection, shaping  # noqa: F401
