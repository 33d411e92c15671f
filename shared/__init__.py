"""The agent–controller contract: topics, messages, manifest, hardware profile, signing.

Pure data and pure functions only; imports neither `agent` nor `controller`.
"""

from typing import Final

__version__ = "0.1.0"

#: Version of every JSON payload on the wire; bumped on an incompatible change.
SCHEMA_VERSION: Final = 1
