"""s3stream: an S3 bucket as a durable message broker.

The library API: build :class:`~s3stream.config.Settings`, create a :class:`Consumer`, register
handlers, ``await consumer.run()``; call :meth:`Consumer.stop` to shut down gracefully. Publish with
:class:`Producer`; follow a snapshot object with :class:`Follower`.
"""

from s3stream._version import __version__
from s3stream.config import Settings, build_settings, load_settings
from s3stream.errors import DeadLetterNow, S3StreamError
from s3stream.integrations.snapshot import Follower
from s3stream.layouts.producer import Producer
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.handlers import handler_factory

__all__ = [
    "Consumer", "DeadLetterNow", "Follower", "Message", "Producer", "S3StreamError", "Settings",
    "__version__", "build_settings", "handler_factory", "load_settings",
]
