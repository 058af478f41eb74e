"""The ``files`` connector: a landing-directory source and a directory sink.

A plugin of the public SDK (``streamflow.connectors``) only. CSV and JSON Lines need nothing
extra; Parquet needs pyarrow (``pip install 'streamflow[parquet]'``), imported only when a
pipeline asks for that format. ``read_rows`` reads what the sink wrote, each key once.
"""

from streamflow.connectors import ConnectorSpec

from ._reader import read_rows
from ._sink import FilesSink, FilesSinkConfig, Rows
from ._source import IGNORED_SUFFIXES, FilesSource, FilesSourceConfig

FILES = ConnectorSpec(
    name="files",
    source=FilesSource,
    sink=FilesSink,
    source_config=FilesSourceConfig,
    sink_config=FilesSinkConfig,
)

__all__ = [
    "FILES",
    "IGNORED_SUFFIXES",
    "FilesSink",
    "FilesSinkConfig",
    "FilesSource",
    "FilesSourceConfig",
    "Rows",
    "read_rows",
]
