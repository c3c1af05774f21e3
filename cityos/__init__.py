"""CityOS: a city's live traffic and environment data, from sensors to answers.

The import root for everything CityOS ships. The design card's top-level folders map here:
``geo/`` is ``cityos.geo``, ``streaming/`` is ``cityos.streaming``, ``nlq/`` is ``cityos.nlq``
(see ``[tool.setuptools]`` in pyproject.toml). This package holds what every part shares:
settings, topic names, event schemas and database access.
"""

__version__ = "0.1.0"
