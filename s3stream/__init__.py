"""s3stream: an S3 bucket as a durable message broker.

The library API: build :class:`~s3stream.config.Settings`, create a :class:`Consumer`, register
handlers, ``await consumer.run()``; call :meth:`Consumer.stop` to shut down gracefully.
"""

from s3stream._version import __version__
from s3stream.config import Settings, build_settings, load_settings
from s3stream.consumer import Consumer
from s3stream.errors import DeadLetterNow, S3StreamError
from s3stream.handlers import handler_factory
from s3stream.message import Message

__all__ = [
    "Consumer", "DeadLetterNow", "Message", "S3StreamError", "Settings", "__version__", "build_settings",
    "handler_factory", "load_settings",
]
