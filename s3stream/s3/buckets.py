"""Bucket set-up and inspection: create (general purpose or directory), versioning, notifications,
lifecycle, checks that a bucket exists and is versioned. Rare calls, all through aiobotocore."""

from __future__ import annotations

from typing import Any

from s3stream import errors


class BucketOperations:
    """The bucket-level half of :class:`~s3stream.s3.store.Store`; the store supplies the client and
    ``_call`` (one operation through the retry policy, pacing and error translation)."""

    client: Any

    async def _call(self, operation: str, method: Any, **params: Any) -> Any:
        raise NotImplementedError

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket."""
        await self._call("DeleteBucket", self.client.delete_bucket, Bucket=bucket)

    async def versioning_status(self, bucket: str) -> str:
        """``Enabled``, ``Suspended`` or ``""`` (never enabled)."""
        resp = await self._call("GetBucketVersioning", self.client.get_bucket_versioning, Bucket=bucket)
        return str(resp.get("Status") or "")

    async def put_versioning(self, bucket: str, status: str) -> None:
        """Set the bucket's versioning to ``Enabled`` or ``Suspended``."""
        await self._call("PutBucketVersioning", self.client.put_bucket_versioning, Bucket=bucket,
                         VersioningConfiguration={"Status": status})

    async def get_bucket_notification(self, bucket: str) -> dict[str, Any]:
        """The bucket's notification configuration (``QueueConfigurations``, ``TopicConfigurations``…)."""
        resp = await self._call("GetBucketNotificationConfiguration",
                                self.client.get_bucket_notification_configuration, Bucket=bucket)
        return {k: v for k, v in resp.items() if k != "ResponseMetadata"}

    async def put_bucket_notification(self, bucket: str, config: dict[str, Any]) -> None:
        """Replace the bucket's notification configuration with ``config``."""
        await self._call("PutBucketNotificationConfiguration",
                         self.client.put_bucket_notification_configuration, Bucket=bucket,
                         NotificationConfiguration=config)

    async def check_bucket(self, bucket: str, *, require_versioning: bool = False) -> None:
        """Fail with one clear error when the bucket is missing or unreachable (or not versioned)."""
        await self._call("HeadBucket", self.client.head_bucket, Bucket=bucket)
        if require_versioning:
            await self.require_versioning(bucket)

    async def require_versioning(self, bucket: str) -> None:
        """Fail with one clear error when the bucket is not versioned."""
        status = await self.versioning_status(bucket)
        if status != "Enabled":
            status = status or "never enabled"
            raise errors.VersioningNotEnabled(
                f"versioning is not enabled on bucket {bucket!r} ({status}); enable it with "
                f"`aws s3api put-bucket-versioning --bucket {bucket} "
                "--versioning-configuration Status=Enabled`, or use a log-layout topic"
            )

    async def create_bucket(self, bucket: str, *, versioning: bool, region: str = "us-east-1") -> None:
        """Create a bucket (idempotent for its owner) and optionally enable versioning."""
        params: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._call("CreateBucket", self.client.create_bucket, **params)
        except errors.StoreError as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou"}:
                raise
        if versioning:
            await self._call(
                "PutBucketVersioning", self.client.put_bucket_versioning,
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"},
            )

    async def create_directory_bucket(self, bucket: str, zone: str) -> None:
        """Create an S3 Express One Zone directory bucket in the availability zone ``zone`` (an AZ ID
        such as ``use1-az4``). Directory buckets have no versioning."""
        config = {"Location": {"Type": "AvailabilityZone", "Name": zone},
                  "Bucket": {"Type": "Directory", "DataRedundancy": "SingleAvailabilityZone"}}
        await self._call("CreateBucket", self.client.create_bucket, Bucket=bucket,
                         CreateBucketConfiguration=config)

    async def lifecycle_configuration(self, bucket: str) -> dict[str, Any]:
        """The bucket's lifecycle configuration: ``Rules`` ([] when it has none) and, when S3 sends it,
        ``TransitionDefaultMinimumObjectSize``."""
        try:
            resp = await self._call("GetBucketLifecycleConfiguration",
                                    self.client.get_bucket_lifecycle_configuration, Bucket=bucket)
        except errors.NotFound as exc:
            if exc.code == "NoSuchLifecycleConfiguration":
                return {"Rules": []}
            raise
        return {k: v for k, v in resp.items() if k in {"Rules", "TransitionDefaultMinimumObjectSize"}}

    async def put_lifecycle_configuration(self, bucket: str, configuration: dict[str, Any]) -> None:
        """Replace the bucket's whole lifecycle configuration (S3 keeps no rule that is not in it)."""
        extra = {k: v for k, v in configuration.items() if k == "TransitionDefaultMinimumObjectSize"}
        await self._call("PutBucketLifecycleConfiguration", self.client.put_bucket_lifecycle_configuration,
                         Bucket=bucket, LifecycleConfiguration={"Rules": configuration["Rules"]}, **extra)
