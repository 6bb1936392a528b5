from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class TasksRequest(_message.Message):
    __slots__ = ("plan_hash",)
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    plan_hash: str
    def __init__(self, plan_hash: str | None = ...) -> None: ...

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
    def __init__(self, name: str | None = ..., kind: str | None = ..., model: str | None = ..., args_json: str | None = ...) -> None: ...

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
    def __init__(self, action: TasksReply.Action | str | None = ..., round: int | None = ..., tasks: _Iterable[Task | _Mapping] | None = ..., retry_after_seconds: float | None = ..., total_rounds: int | None = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: int | None = ...) -> None: ...

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
    def __init__(self, name: str | None = ..., dtype: str | None = ..., shape: _Iterable[int] | None = ..., offset: int | None = ..., data: bytes | None = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("round", "task", "example_count", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: str | None = ..., value: float | None = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    round: int
    task: str
    example_count: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, round: int | None = ..., task: str | None = ..., example_count: int | None = ..., metrics: _Mapping[str, float] | None = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("header", "tensor")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    tensor: TensorChunk
    def __init__(self, header: ResultHeader | _Mapping | None = ..., tensor: TensorChunk | _Mapping | None = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: bool | None = ..., reason: str | None = ...) -> None: ...
