import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NF(_message.Message):
    __slots__ = ("name", "description", "source", "source_sha256", "image_size", "revision", "created", "updated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    source: str
    source_sha256: str
    image_size: int
    revision: int
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., source: _Optional[str] = ..., source_sha256: _Optional[str] = ..., image_size: _Optional[int] = ..., revision: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeployNFRequest(_message.Message):
    __slots__ = ("name", "source", "description", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    description: str
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., description: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class GetNFRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListNFsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNFsResponse(_message.Message):
    __slots__ = ("nfs",)
    NFS_FIELD_NUMBER: _ClassVar[int]
    nfs: _containers.RepeatedCompositeFieldContainer[NF]
    def __init__(self, nfs: _Optional[_Iterable[_Union[NF, _Mapping]]] = ...) -> None: ...

class DeleteNFRequest(_message.Message):
    __slots__ = ("name", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeleteNFResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class ScaleSpec(_message.Message):
    __slots__ = ("replicas", "min_replicas", "max_replicas")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    min_replicas: int
    max_replicas: int
    def __init__(self, replicas: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class SFCStatus(_message.Message):
    __slots__ = ("phase", "message")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    message: str
    def __init__(self, phase: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SFC(_message.Message):
    __slots__ = ("name", "spec", "spec_json", "nfs", "scale", "status", "revision", "created", "updated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    NFS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: str
    spec_json: str
    nfs: _containers.RepeatedScalarFieldContainer[str]
    scale: ScaleSpec
    status: SFCStatus
    revision: int
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[str] = ..., spec_json: _Optional[str] = ..., nfs: _Optional[_Iterable[str]] = ..., scale: _Optional[_Union[ScaleSpec, _Mapping]] = ..., status: _Optional[_Union[SFCStatus, _Mapping]] = ..., revision: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApplySFCRequest(_message.Message):
    __slots__ = ("spec", "expected_revision")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    spec: str
    expected_revision: int
    def __init__(self, spec: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class GetSFCRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListSFCsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSFCsResponse(_message.Message):
    __slots__ = ("sfcs",)
    SFCS_FIELD_NUMBER: _ClassVar[int]
    sfcs: _containers.RepeatedCompositeFieldContainer[SFC]
    def __init__(self, sfcs: _Optional[_Iterable[_Union[SFC, _Mapping]]] = ...) -> None: ...

class DeleteSFCRequest(_message.Message):
    __slots__ = ("name", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeleteSFCResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("sfc", "replicas", "min_replicas", "max_replicas")
    SFC_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    replicas: int
    min_replicas: int
    max_replicas: int
    def __init__(self, sfc: _Optional[str] = ..., replicas: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "record_json", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    record_json: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., record_json: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...
