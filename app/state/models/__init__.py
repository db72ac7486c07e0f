"""All tables. Import every domain module here so Alembic and tests see the whole schema.

One module per domain, each added by the issue that owns it::

    meta.py        key/value facts about the node (schema notes, generated ids)
"""

from sqlmodel import SQLModel

from app.state.models import apps as _apps  # noqa: F401
from app.state.models import blob as _blob  # noqa: F401
from app.state.models import containers as _containers  # noqa: F401
from app.state.models import images as _images  # noqa: F401
from app.state.models import intents as _intents  # noqa: F401
from app.state.models import meta  # noqa: F401
from app.state.models import network as _network  # noqa: F401
from app.state.models import pods as _pods  # noqa: F401

metadata = SQLModel.metadata
