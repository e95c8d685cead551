import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DrainNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class UndrainNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class DrainNodeResponse(_message.Message):
    __slots__ = ("node", "cordoned", "sfcs")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    SFCS_FIELD_NUMBER: _ClassVar[int]
    node: str
    cordoned: bool
    sfcs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., cordoned: _Optional[bool] = ..., sfcs: _Optional[_Iterable[str]] = ...) -> None: ...

class MoveSFCRequest(_message.Message):
    __slots__ = ("sfc", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    node: str
    def __init__(self, sfc: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class MoveSFCResponse(_message.Message):
    __slots__ = ("sfc", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    node: str
    def __init__(self, sfc: _Optional[str] = ..., node: _Optional[str] = ..., **kwargs) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("sfc", "since")
    SFC_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, sfc: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("packets", "bytes", "cpu_seconds", "state_byte_seconds")
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    packets: int
    bytes: int
    cpu_seconds: float
    state_byte_seconds: float
    def __init__(self, packets: _Optional[int] = ..., bytes: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., state_byte_seconds: _Optional[float] = ...) -> None: ...

class SFCUsage(_message.Message):
    __slots__ = ("sfc", "total", "nodes")
    class NodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Usage
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...
    SFC_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    total: Usage
    nodes: _containers.MessageMap[str, Usage]
    def __init__(self, sfc: _Optional[str] = ..., total: _Optional[_Union[Usage, _Mapping]] = ..., nodes: _Optional[_Mapping[str, Usage]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("sfcs", "since", "read_at", "unreachable", "node")
    SFCS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    READ_AT_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfcs: _containers.RepeatedCompositeFieldContainer[SFCUsage]
    since: _timestamp_pb2.Timestamp
    read_at: _timestamp_pb2.Timestamp
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    node: str
    def __init__(self, sfcs: _Optional[_Iterable[_Union[SFCUsage, _Mapping]]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., read_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unreachable: _Optional[_Iterable[str]] = ..., node: _Optional[str] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("sfc", "nf", "at", "count", "seconds", "max_bytes", "snaplen", "trace", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNAPLEN_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    at: str
    count: int
    seconds: float
    max_bytes: int
    snaplen: int
    trace: bool
    node: str
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., at: _Optional[str] = ..., count: _Optional[int] = ..., seconds: _Optional[float] = ..., max_bytes: _Optional[int] = ..., snaplen: _Optional[int] = ..., trace: _Optional[bool] = ..., node: _Optional[str] = ...) -> None: ...

class CapturedPacket(_message.Message):
    __slots__ = ("data", "orig_len", "time_ns", "node", "instance", "nf", "verdict", "reason", "at", "router")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ORIG_LEN_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    orig_len: int
    time_ns: int
    node: str
    instance: int
    nf: str
    verdict: str
    reason: str
    at: str
    router: bool
    def __init__(self, data: _Optional[bytes] = ..., orig_len: _Optional[int] = ..., time_ns: _Optional[int] = ..., node: _Optional[str] = ..., instance: _Optional[int] = ..., nf: _Optional[str] = ..., verdict: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[str] = ..., router: _Optional[bool] = ...) -> None: ...

class TraceStep(_message.Message):
    __slots__ = ("nf", "label", "reason", "call_ns", "batch")
    NF_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CALL_NS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    nf: str
    label: str
    reason: str
    call_ns: int
    batch: int
    def __init__(self, nf: _Optional[str] = ..., label: _Optional[str] = ..., reason: _Optional[str] = ..., call_ns: _Optional[int] = ..., batch: _Optional[int] = ...) -> None: ...

class TracedPacket(_message.Message):
    __slots__ = ("packet", "steps")
    PACKET_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    packet: CapturedPacket
    steps: _containers.RepeatedCompositeFieldContainer[TraceStep]
    def __init__(self, packet: _Optional[_Union[CapturedPacket, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[TraceStep, _Mapping]]] = ...) -> None: ...

class CaptureSummary(_message.Message):
    __slots__ = ("packets", "bytes", "lost", "stopped", "node")
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    packets: int
    bytes: int
    lost: int
    stopped: str
    node: str
    def __init__(self, packets: _Optional[int] = ..., bytes: _Optional[int] = ..., lost: _Optional[int] = ..., stopped: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class CaptureEvent(_message.Message):
    __slots__ = ("packet", "trace", "summary")
    PACKET_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    packet: CapturedPacket
    trace: TracedPacket
    summary: CaptureSummary
    def __init__(self, packet: _Optional[_Union[CapturedPacket, _Mapping]] = ..., trace: _Optional[_Union[TracedPacket, _Mapping]] = ..., summary: _Optional[_Union[CaptureSummary, _Mapping]] = ...) -> None: ...

class ReadStateRequest(_message.Message):
    __slots__ = ("sfc", "nf", "table", "limit", "merge", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    table: str
    limit: int
    merge: bool
    node: str
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., table: _Optional[str] = ..., limit: _Optional[int] = ..., merge: _Optional[bool] = ..., node: _Optional[str] = ...) -> None: ...

class StateTable(_message.Message):
    __slots__ = ("name", "flags", "key_size", "value_size", "capacity", "count", "entries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    flags: int
    key_size: int
    value_size: int
    capacity: int
    count: int
    entries: _containers.RepeatedCompositeFieldContainer[StateEntry]
    def __init__(self, name: _Optional[str] = ..., flags: _Optional[int] = ..., key_size: _Optional[int] = ..., value_size: _Optional[int] = ..., capacity: _Optional[int] = ..., count: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[StateEntry, _Mapping]]] = ...) -> None: ...

class StateEntry(_message.Message):
    __slots__ = ("key", "value", "decoded")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    decoded: str
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., decoded: _Optional[str] = ...) -> None: ...

class ReadStateResponse(_message.Message):
    __slots__ = ("node", "tables")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    node: str
    tables: _containers.RepeatedCompositeFieldContainer[StateTable]
    def __init__(self, node: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[StateTable, _Mapping]]] = ...) -> None: ...

class SnapshotStateRequest(_message.Message):
    __slots__ = ("sfc", "nf", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    node: str
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class TableImage(_message.Message):
    __slots__ = ("name", "size", "zdata")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ZDATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    zdata: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., zdata: _Optional[bytes] = ...) -> None: ...

class StateSnapshot(_message.Message):
    __slots__ = ("sfc", "nf", "node", "taken_unix_ms", "tables", "nf_code", "nf_code_sha256")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TAKEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    NF_CODE_FIELD_NUMBER: _ClassVar[int]
    NF_CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    node: str
    taken_unix_ms: int
    tables: _containers.RepeatedCompositeFieldContainer[TableImage]
    nf_code: str
    nf_code_sha256: str
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., node: _Optional[str] = ..., taken_unix_ms: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableImage, _Mapping]]] = ..., nf_code: _Optional[str] = ..., nf_code_sha256: _Optional[str] = ...) -> None: ...

class BulkChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RestoreStateRequest(_message.Message):
    __slots__ = ("sfc", "nf", "snapshot", "force", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    snapshot: StateSnapshot
    force: bool
    node: str
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., snapshot: _Optional[_Union[StateSnapshot, _Mapping]] = ..., force: _Optional[bool] = ..., node: _Optional[str] = ...) -> None: ...

class RestoreStateResponse(_message.Message):
    __slots__ = ("node", "tables")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    node: str
    tables: int
    def __init__(self, node: _Optional[str] = ..., tables: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("type", "kind", "name", "revision", "json")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    type: str
    kind: str
    name: str
    revision: int
    json: str
    def __init__(self, type: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., revision: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("replicas", "min_replicas", "max_replicas", "target_pps")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_PPS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    min_replicas: int
    max_replicas: int
    target_pps: float
    def __init__(self, replicas: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., target_pps: _Optional[float] = ...) -> None: ...

class SFCStatus(_message.Message):
    __slots__ = ("phase", "message", "node", "generation", "instances", "nodes", "checkpoint_to", "restored_of", "restored_age_ms", "restore", "joined", "moving_to", "moves", "stuck", "move_error", "checkpoint_unix_ms", "checkpoint_error", "checkpoint_peers")
    class NodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CheckpointPeersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_TO_FIELD_NUMBER: _ClassVar[int]
    RESTORED_OF_FIELD_NUMBER: _ClassVar[int]
    RESTORED_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    MOVING_TO_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    STUCK_FIELD_NUMBER: _ClassVar[int]
    MOVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PEERS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    message: str
    node: str
    generation: int
    instances: int
    nodes: _containers.ScalarMap[str, int]
    checkpoint_to: str
    restored_of: str
    restored_age_ms: int
    restore: str
    joined: _containers.RepeatedScalarFieldContainer[str]
    moving_to: str
    moves: int
    stuck: str
    move_error: str
    checkpoint_unix_ms: int
    checkpoint_error: str
    checkpoint_peers: _containers.ScalarMap[str, str]
    def __init__(self, phase: _Optional[str] = ..., message: _Optional[str] = ..., node: _Optional[str] = ..., generation: _Optional[int] = ..., instances: _Optional[int] = ..., nodes: _Optional[_Mapping[str, int]] = ..., checkpoint_to: _Optional[str] = ..., restored_of: _Optional[str] = ..., restored_age_ms: _Optional[int] = ..., restore: _Optional[str] = ..., joined: _Optional[_Iterable[str]] = ..., moving_to: _Optional[str] = ..., moves: _Optional[int] = ..., stuck: _Optional[str] = ..., move_error: _Optional[str] = ..., checkpoint_unix_ms: _Optional[int] = ..., checkpoint_error: _Optional[str] = ..., checkpoint_peers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SFC(_message.Message):
    __slots__ = ("name", "spec", "spec_json", "nfs", "scale", "status", "revision", "created", "updated", "generation", "route")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    NFS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: str
    spec_json: str
    nfs: _containers.RepeatedScalarFieldContainer[str]
    scale: ScaleSpec
    status: SFCStatus
    revision: int
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    generation: int
    route: Route
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[str] = ..., spec_json: _Optional[str] = ..., nfs: _Optional[_Iterable[str]] = ..., scale: _Optional[_Union[ScaleSpec, _Mapping]] = ..., status: _Optional[_Union[SFCStatus, _Mapping]] = ..., revision: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generation: _Optional[int] = ..., route: _Optional[_Union[Route, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("name", "record_json", "revision", "cordoned")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    name: str
    record_json: str
    revision: int
    cordoned: bool
    def __init__(self, name: _Optional[str] = ..., record_json: _Optional[str] = ..., revision: _Optional[int] = ..., cordoned: _Optional[bool] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class GatewayInfo(_message.Message):
    __slots__ = ("name", "record_json", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    record_json: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., record_json: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListGatewaysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGatewaysResponse(_message.Message):
    __slots__ = ("gateways",)
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayInfo]
    def __init__(self, gateways: _Optional[_Iterable[_Union[GatewayInfo, _Mapping]]] = ...) -> None: ...

class MergeStateRequest(_message.Message):
    __slots__ = ("sfc",)
    SFC_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    def __init__(self, sfc: _Optional[str] = ...) -> None: ...

class MergeStateResponse(_message.Message):
    __slots__ = ("node", "instances")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    node: str
    instances: int
    def __init__(self, node: _Optional[str] = ..., instances: _Optional[int] = ...) -> None: ...

class RunSFCRequest(_message.Message):
    __slots__ = ("spec", "nf_sources", "generation", "replicas", "incarnation", "vxlan", "peers", "seed_from", "checkpoint_to", "restore_from", "restore_of")
    class NfSourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    NF_SOURCES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VXLAN_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FROM_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_TO_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FROM_FIELD_NUMBER: _ClassVar[int]
    RESTORE_OF_FIELD_NUMBER: _ClassVar[int]
    spec: str
    nf_sources: _containers.ScalarMap[str, str]
    generation: int
    replicas: int
    incarnation: int
    vxlan: VxlanRoute
    peers: _containers.RepeatedCompositeFieldContainer[PeerRef]
    seed_from: PeerRef
    checkpoint_to: PeerRef
    restore_from: PeerRef
    restore_of: str
    def __init__(self, spec: _Optional[str] = ..., nf_sources: _Optional[_Mapping[str, str]] = ..., generation: _Optional[int] = ..., replicas: _Optional[int] = ..., incarnation: _Optional[int] = ..., vxlan: _Optional[_Union[VxlanRoute, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[PeerRef, _Mapping]]] = ..., seed_from: _Optional[_Union[PeerRef, _Mapping]] = ..., checkpoint_to: _Optional[_Union[PeerRef, _Mapping]] = ..., restore_from: _Optional[_Union[PeerRef, _Mapping]] = ..., restore_of: _Optional[str] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("header", "pages")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    header: CheckpointHeader
    pages: _containers.RepeatedCompositeFieldContainer[CheckpointPage]
    def __init__(self, header: _Optional[_Union[CheckpointHeader, _Mapping]] = ..., pages: _Optional[_Iterable[_Union[CheckpointPage, _Mapping]]] = ...) -> None: ...

class CheckpointHeader(_message.Message):
    __slots__ = ("node", "sfc", "seq", "base_seq", "taken_unix_ms", "tables", "page_size", "pages", "drop")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SFC_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    TAKEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    node: str
    sfc: str
    seq: int
    base_seq: int
    taken_unix_ms: int
    tables: _containers.RepeatedCompositeFieldContainer[CheckpointTable]
    page_size: int
    pages: int
    drop: bool
    def __init__(self, node: _Optional[str] = ..., sfc: _Optional[str] = ..., seq: _Optional[int] = ..., base_seq: _Optional[int] = ..., taken_unix_ms: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[CheckpointTable, _Mapping]]] = ..., page_size: _Optional[int] = ..., pages: _Optional[int] = ..., drop: _Optional[bool] = ...) -> None: ...

class CheckpointTable(_message.Message):
    __slots__ = ("nf", "table", "size")
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    nf: str
    table: str
    size: int
    def __init__(self, nf: _Optional[str] = ..., table: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CheckpointPage(_message.Message):
    __slots__ = ("table", "index", "zdata")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ZDATA_FIELD_NUMBER: _ClassVar[int]
    table: int
    index: int
    zdata: bytes
    def __init__(self, table: _Optional[int] = ..., index: _Optional[int] = ..., zdata: _Optional[bytes] = ...) -> None: ...

class PutCheckpointResponse(_message.Message):
    __slots__ = ("seq", "bytes")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    bytes: int
    def __init__(self, seq: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("node", "sfc")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SFC_FIELD_NUMBER: _ClassVar[int]
    node: str
    sfc: str
    def __init__(self, node: _Optional[str] = ..., sfc: _Optional[str] = ...) -> None: ...

class PeerRef(_message.Message):
    __slots__ = ("node", "address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class VxlanRoute(_message.Message):
    __slots__ = ("tag", "vni", "gateway_ip", "gateway_mac")
    TAG_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_IP_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_MAC_FIELD_NUMBER: _ClassVar[int]
    tag: int
    vni: int
    gateway_ip: str
    gateway_mac: str
    def __init__(self, tag: _Optional[int] = ..., vni: _Optional[int] = ..., gateway_ip: _Optional[str] = ..., gateway_mac: _Optional[str] = ...) -> None: ...

class AgentSFC(_message.Message):
    __slots__ = ("name", "generation", "replicas", "instances", "rx", "out", "dropped", "held", "incarnation", "phase", "message", "crashes", "drops", "vxlan", "restored_of", "restored_age_ms", "restore", "checkpoint_to", "checkpoint_unix_ms", "checkpoint_error", "peer_state", "deltas_pushed", "deltas_applied", "pool_shares")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RX_FIELD_NUMBER: _ClassVar[int]
    OUT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CRASHES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    VXLAN_FIELD_NUMBER: _ClassVar[int]
    RESTORED_OF_FIELD_NUMBER: _ClassVar[int]
    RESTORED_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_TO_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    PEER_STATE_FIELD_NUMBER: _ClassVar[int]
    DELTAS_PUSHED_FIELD_NUMBER: _ClassVar[int]
    DELTAS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    POOL_SHARES_FIELD_NUMBER: _ClassVar[int]
    name: str
    generation: int
    replicas: int
    instances: int
    rx: int
    out: int
    dropped: int
    held: int
    incarnation: int
    phase: str
    message: str
    crashes: int
    drops: _containers.ScalarMap[str, int]
    vxlan: VxlanRoute
    restored_of: str
    restored_age_ms: int
    restore: str
    checkpoint_to: str
    checkpoint_unix_ms: int
    checkpoint_error: str
    peer_state: str
    deltas_pushed: int
    deltas_applied: int
    pool_shares: int
    def __init__(self, name: _Optional[str] = ..., generation: _Optional[int] = ..., replicas: _Optional[int] = ..., instances: _Optional[int] = ..., rx: _Optional[int] = ..., out: _Optional[int] = ..., dropped: _Optional[int] = ..., held: _Optional[int] = ..., incarnation: _Optional[int] = ..., phase: _Optional[str] = ..., message: _Optional[str] = ..., crashes: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., vxlan: _Optional[_Union[VxlanRoute, _Mapping]] = ..., restored_of: _Optional[str] = ..., restored_age_ms: _Optional[int] = ..., restore: _Optional[str] = ..., checkpoint_to: _Optional[str] = ..., checkpoint_unix_ms: _Optional[int] = ..., checkpoint_error: _Optional[str] = ..., peer_state: _Optional[str] = ..., deltas_pushed: _Optional[int] = ..., deltas_applied: _Optional[int] = ..., pool_shares: _Optional[int] = ...) -> None: ...

class StopSFCRequest(_message.Message):
    __slots__ = ("name", "return_to")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RETURN_TO_FIELD_NUMBER: _ClassVar[int]
    name: str
    return_to: PeerRef
    def __init__(self, name: _Optional[str] = ..., return_to: _Optional[_Union[PeerRef, _Mapping]] = ...) -> None: ...

class StopSFCResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScaleSFCRequest(_message.Message):
    __slots__ = ("name", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PortCounters(_message.Message):
    __slots__ = ("rx", "tx", "tx_failed", "unmatched", "missed")
    RX_FIELD_NUMBER: _ClassVar[int]
    TX_FIELD_NUMBER: _ClassVar[int]
    TX_FAILED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    rx: int
    tx: int
    tx_failed: int
    unmatched: int
    missed: int
    def __init__(self, rx: _Optional[int] = ..., tx: _Optional[int] = ..., tx_failed: _Optional[int] = ..., unmatched: _Optional[int] = ..., missed: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("name", "sfcs", "ports", "vxlan_rx", "arp_replies", "vxlan_drops")
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PortCounters
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PortCounters, _Mapping]] = ...) -> None: ...
    class VxlanDropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SFCS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    VXLAN_RX_FIELD_NUMBER: _ClassVar[int]
    ARP_REPLIES_FIELD_NUMBER: _ClassVar[int]
    VXLAN_DROPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sfcs: _containers.RepeatedCompositeFieldContainer[AgentSFC]
    ports: _containers.MessageMap[str, PortCounters]
    vxlan_rx: int
    arp_replies: int
    vxlan_drops: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., sfcs: _Optional[_Iterable[_Union[AgentSFC, _Mapping]]] = ..., ports: _Optional[_Mapping[str, PortCounters]] = ..., vxlan_rx: _Optional[int] = ..., arp_replies: _Optional[int] = ..., vxlan_drops: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ResetStateRequest(_message.Message):
    __slots__ = ("sfc", "nf", "table", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    table: str
    node: str
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., table: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class ResetStateResponse(_message.Message):
    __slots__ = ("node", "tables")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    node: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ...) -> None: ...

class SharePoolRequest(_message.Message):
    __slots__ = ("sfc", "node", "nf", "table")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    node: str
    nf: str
    table: str
    def __init__(self, sfc: _Optional[str] = ..., node: _Optional[str] = ..., nf: _Optional[str] = ..., table: _Optional[str] = ...) -> None: ...

class SharePoolResponse(_message.Message):
    __slots__ = ("node", "share", "empty", "dry")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    DRY_FIELD_NUMBER: _ClassVar[int]
    node: str
    share: TableImage
    empty: bool
    dry: int
    def __init__(self, node: _Optional[str] = ..., share: _Optional[_Union[TableImage, _Mapping]] = ..., empty: _Optional[bool] = ..., dry: _Optional[int] = ...) -> None: ...

class SeedRequest(_message.Message):
    __slots__ = ("sfc", "node")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    node: str
    def __init__(self, sfc: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class NFTables(_message.Message):
    __slots__ = ("nf", "tables")
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    nf: str
    tables: _containers.RepeatedCompositeFieldContainer[TableImage]
    def __init__(self, nf: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[TableImage, _Mapping]]] = ...) -> None: ...

class SeedResponse(_message.Message):
    __slots__ = ("node", "nfs")
    NODE_FIELD_NUMBER: _ClassVar[int]
    NFS_FIELD_NUMBER: _ClassVar[int]
    node: str
    nfs: _containers.RepeatedCompositeFieldContainer[NFTables]
    def __init__(self, node: _Optional[str] = ..., nfs: _Optional[_Iterable[_Union[NFTables, _Mapping]]] = ...) -> None: ...

class ReturnStateRequest(_message.Message):
    __slots__ = ("sfc", "node", "nfs")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NFS_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    node: str
    nfs: _containers.RepeatedCompositeFieldContainer[NFTables]
    def __init__(self, sfc: _Optional[str] = ..., node: _Optional[str] = ..., nfs: _Optional[_Iterable[_Union[NFTables, _Mapping]]] = ...) -> None: ...

class ReturnStateResponse(_message.Message):
    __slots__ = ("node", "tables", "merged")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    node: str
    tables: int
    merged: int
    def __init__(self, node: _Optional[str] = ..., tables: _Optional[int] = ..., merged: _Optional[int] = ...) -> None: ...

class DeltaEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class PushDeltasRequest(_message.Message):
    __slots__ = ("node", "sfc", "nf", "table", "origin", "epoch", "seq", "key_size", "value_size", "capacity", "entries")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    node: str
    sfc: str
    nf: str
    table: str
    origin: bytes
    epoch: int
    seq: int
    key_size: int
    value_size: int
    capacity: int
    entries: _containers.RepeatedCompositeFieldContainer[DeltaEntry]
    def __init__(self, node: _Optional[str] = ..., sfc: _Optional[str] = ..., nf: _Optional[str] = ..., table: _Optional[str] = ..., origin: _Optional[bytes] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., key_size: _Optional[int] = ..., value_size: _Optional[int] = ..., capacity: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[DeltaEntry, _Mapping]]] = ...) -> None: ...

class PushDeltasResponse(_message.Message):
    __slots__ = ("applied", "entries")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    entries: int
    def __init__(self, applied: _Optional[bool] = ..., entries: _Optional[int] = ...) -> None: ...

class MoveFlowsRequest(_message.Message):
    __slots__ = ("sfc", "target", "slots", "gateway_sfc", "timeout_ms", "check", "marker", "prepare", "snapshot")
    SFC_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_SFC_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    target: PeerRef
    slots: _containers.RepeatedScalarFieldContainer[int]
    gateway_sfc: int
    timeout_ms: int
    check: bool
    marker: int
    prepare: bool
    snapshot: int
    def __init__(self, sfc: _Optional[str] = ..., target: _Optional[_Union[PeerRef, _Mapping]] = ..., slots: _Optional[_Iterable[int]] = ..., gateway_sfc: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., check: _Optional[bool] = ..., marker: _Optional[int] = ..., prepare: _Optional[bool] = ..., snapshot: _Optional[int] = ...) -> None: ...

class MoveFlowsResponse(_message.Message):
    __slots__ = ("entries", "tables", "wait_us", "snapshot")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    WAIT_US_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    entries: int
    tables: int
    wait_us: int
    snapshot: int
    def __init__(self, entries: _Optional[int] = ..., tables: _Optional[int] = ..., wait_us: _Optional[int] = ..., snapshot: _Optional[int] = ...) -> None: ...

class ImportFlowsRequest(_message.Message):
    __slots__ = ("sfc", "nf", "table", "flags", "key_size", "value_size", "capacity", "keys", "values", "undo")
    SFC_FIELD_NUMBER: _ClassVar[int]
    NF_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    nf: str
    table: str
    flags: int
    key_size: int
    value_size: int
    capacity: int
    keys: bytes
    values: bytes
    undo: bool
    def __init__(self, sfc: _Optional[str] = ..., nf: _Optional[str] = ..., table: _Optional[str] = ..., flags: _Optional[int] = ..., key_size: _Optional[int] = ..., value_size: _Optional[int] = ..., capacity: _Optional[int] = ..., keys: _Optional[bytes] = ..., values: _Optional[bytes] = ..., undo: _Optional[bool] = ...) -> None: ...

class ImportFlowsResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    def __init__(self, entries: _Optional[int] = ...) -> None: ...

class HoldFlowsRequest(_message.Message):
    __slots__ = ("sfc", "source_ip", "target_ip", "slots", "timeout_ms")
    SFC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    TARGET_IP_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    source_ip: str
    target_ip: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    timeout_ms: int
    def __init__(self, sfc: _Optional[str] = ..., source_ip: _Optional[str] = ..., target_ip: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class HoldFlowsResponse(_message.Message):
    __slots__ = ("move_id", "gateway_sfc", "marker")
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_SFC_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    move_id: int
    gateway_sfc: int
    marker: int
    def __init__(self, move_id: _Optional[int] = ..., gateway_sfc: _Optional[int] = ..., marker: _Optional[int] = ...) -> None: ...

class ReleaseFlowsRequest(_message.Message):
    __slots__ = ("move_id", "commit")
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    move_id: int
    commit: bool
    def __init__(self, move_id: _Optional[int] = ..., commit: _Optional[bool] = ...) -> None: ...

class ReleaseFlowsResponse(_message.Message):
    __slots__ = ("flows", "held", "held_dropped")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    HELD_DROPPED_FIELD_NUMBER: _ClassVar[int]
    flows: int
    held: int
    held_dropped: int
    def __init__(self, flows: _Optional[int] = ..., held: _Optional[int] = ..., held_dropped: _Optional[int] = ...) -> None: ...

class RouteServer(_message.Message):
    __slots__ = ("node", "ip", "mac", "weight")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    node: str
    ip: str
    mac: str
    weight: int
    def __init__(self, node: _Optional[str] = ..., ip: _Optional[str] = ..., mac: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("sfc", "tag", "vni", "match_json", "vlan", "servers")
    SFC_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    MATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    sfc: str
    tag: int
    vni: int
    match_json: str
    vlan: int
    servers: _containers.RepeatedCompositeFieldContainer[RouteServer]
    def __init__(self, sfc: _Optional[str] = ..., tag: _Optional[int] = ..., vni: _Optional[int] = ..., match_json: _Optional[str] = ..., vlan: _Optional[int] = ..., servers: _Optional[_Iterable[_Union[RouteServer, _Mapping]]] = ...) -> None: ...

class SetRoutesRequest(_message.Message):
    __slots__ = ("routes", "term")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    term: int
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., term: _Optional[int] = ...) -> None: ...

class SetRoutesResponse(_message.Message):
    __slots__ = ("term", "routes")
    TERM_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    term: int
    routes: int
    def __init__(self, term: _Optional[int] = ..., routes: _Optional[int] = ...) -> None: ...

class GetGatewayRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewaySFC(_message.Message):
    __slots__ = ("tag", "rx", "tx", "back", "new_flows", "moved_flows", "drops", "servers", "flow_full", "held", "held_dropped", "moves", "index")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ServersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TAG_FIELD_NUMBER: _ClassVar[int]
    RX_FIELD_NUMBER: _ClassVar[int]
    TX_FIELD_NUMBER: _ClassVar[int]
    BACK_FIELD_NUMBER: _ClassVar[int]
    NEW_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MOVED_FLOWS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    FLOW_FULL_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    HELD_DROPPED_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    tag: int
    rx: int
    tx: int
    back: int
    new_flows: int
    moved_flows: int
    drops: _containers.ScalarMap[str, int]
    servers: _containers.ScalarMap[str, int]
    flow_full: int
    held: int
    held_dropped: int
    moves: int
    index: int
    def __init__(self, tag: _Optional[int] = ..., rx: _Optional[int] = ..., tx: _Optional[int] = ..., back: _Optional[int] = ..., new_flows: _Optional[int] = ..., moved_flows: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., servers: _Optional[_Mapping[str, int]] = ..., flow_full: _Optional[int] = ..., held: _Optional[int] = ..., held_dropped: _Optional[int] = ..., moves: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class GatewayStatus(_message.Message):
    __slots__ = ("name", "term", "sfcs", "ports", "drops", "arp_replies")
    class SfcsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: GatewaySFC
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[GatewaySFC, _Mapping]] = ...) -> None: ...
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PortCounters
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PortCounters, _Mapping]] = ...) -> None: ...
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SFCS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    ARP_REPLIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    term: int
    sfcs: _containers.MessageMap[str, GatewaySFC]
    ports: _containers.MessageMap[str, PortCounters]
    drops: _containers.ScalarMap[str, int]
    arp_replies: int
    def __init__(self, name: _Optional[str] = ..., term: _Optional[int] = ..., sfcs: _Optional[_Mapping[str, GatewaySFC]] = ..., ports: _Optional[_Mapping[str, PortCounters]] = ..., drops: _Optional[_Mapping[str, int]] = ..., arp_replies: _Optional[int] = ...) -> None: ...
