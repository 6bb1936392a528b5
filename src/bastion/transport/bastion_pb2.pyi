from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatRequest(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class SecAggPoll(_message.Message):
    __slots__ = ("round", "attempt", "step")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    round: int
    attempt: int
    step: str
    def __init__(self, round: _Optional[int] = ..., attempt: _Optional[int] = ..., step: _Optional[str] = ...) -> None: ...

class SecAggHeader(_message.Message):
    __slots__ = ("round", "attempt", "step", "total_bytes", "metrics", "status", "retry_after_seconds", "reason")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    attempt: int
    step: str
    total_bytes: int
    metrics: _containers.ScalarMap[str, float]
    status: str
    retry_after_seconds: float
    reason: str
    def __init__(self, round: _Optional[int] = ..., attempt: _Optional[int] = ..., step: _Optional[str] = ..., total_bytes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., status: _Optional[str] = ..., retry_after_seconds: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class SecAggPart(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: SecAggHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[SecAggHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SecAggAck(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class AggregatorChallenge(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AggregatorEvidence(_message.Message):
    __slots__ = ("kind", "quote", "certificate", "nonce")
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    quote: bytes
    certificate: bytes
    nonce: bytes
    def __init__(self, kind: _Optional[str] = ..., quote: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class CollaboratorEvidence(_message.Message):
    __slots__ = ("kind", "quote", "nonce")
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    quote: bytes
    nonce: bytes
    def __init__(self, kind: _Optional[str] = ..., quote: _Optional[bytes] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class AttestationAck(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class TasksRequest(_message.Message):
    __slots__ = ("plan_hash", "workspace_measurement")
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    plan_hash: str
    workspace_measurement: str
    def __init__(self, plan_hash: _Optional[str] = ..., workspace_measurement: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("name", "kind", "model", "args_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    model: str
    args_json: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., args_json: _Optional[str] = ...) -> None: ...

class TasksReply(_message.Message):
    __slots__ = ("action", "round", "tasks", "retry_after_seconds", "total_rounds")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[TasksReply.Action]
        RUN: _ClassVar[TasksReply.Action]
        WAIT: _ClassVar[TasksReply.Action]
        DONE: _ClassVar[TasksReply.Action]
    ACTION_UNSPECIFIED: TasksReply.Action
    RUN: TasksReply.Action
    WAIT: TasksReply.Action
    DONE: TasksReply.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    action: TasksReply.Action
    round: int
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    retry_after_seconds: float
    total_rounds: int
    def __init__(self, action: _Optional[_Union[TasksReply.Action, str]] = ..., round: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., retry_after_seconds: _Optional[float] = ..., total_rounds: _Optional[int] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("round", "task", "example_count", "metrics", "declined", "failed")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    round: int
    task: str
    example_count: int
    metrics: _containers.ScalarMap[str, float]
    declined: str
    failed: str
    def __init__(self, round: _Optional[int] = ..., task: _Optional[str] = ..., example_count: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., declined: _Optional[str] = ..., failed: _Optional[str] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("header", "tensor")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    tensor: TensorChunk
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., tensor: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
