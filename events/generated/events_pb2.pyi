import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetadataValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: bool = ...) -> None: ...

class Metadata(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.MessageMap[str, MetadataValue]
    def __init__(self, entries: _Optional[_Mapping[str, MetadataValue]] = ...) -> None: ...

class AttemptEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "occurred_at", "schema_version", "metadata", "client_attempt_id", "session_id", "item_id", "correct", "quality", "time_taken_ms", "response")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    TIME_TAKEN_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    occurred_at: _timestamp_pb2.Timestamp
    schema_version: int
    metadata: Metadata
    client_attempt_id: str
    session_id: str
    item_id: str
    correct: bool
    quality: int
    time_taken_ms: int
    response: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ..., client_attempt_id: _Optional[str] = ..., session_id: _Optional[str] = ..., item_id: _Optional[str] = ..., correct: bool = ..., quality: _Optional[int] = ..., time_taken_ms: _Optional[int] = ..., response: _Optional[str] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "occurred_at", "schema_version", "metadata", "session_id", "started_at", "ended_at", "items_attempted", "items_correct")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_ATTEMPTED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_CORRECT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    occurred_at: _timestamp_pb2.Timestamp
    schema_version: int
    metadata: Metadata
    session_id: str
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    items_attempted: int
    items_correct: int
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ..., session_id: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., items_attempted: _Optional[int] = ..., items_correct: _Optional[int] = ...) -> None: ...

class PlacementEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "occurred_at", "schema_version", "metadata", "placement_id", "completed", "score_double", "score_int", "level")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    SCORE_DOUBLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_INT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    occurred_at: _timestamp_pb2.Timestamp
    schema_version: int
    metadata: Metadata
    placement_id: str
    completed: bool
    score_double: float
    score_int: int
    level: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ..., placement_id: _Optional[str] = ..., completed: bool = ..., score_double: _Optional[float] = ..., score_int: _Optional[int] = ..., level: _Optional[str] = ...) -> None: ...

class ActivityEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "occurred_at", "schema_version", "metadata", "activity_type", "properties")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    occurred_at: _timestamp_pb2.Timestamp
    schema_version: int
    metadata: Metadata
    activity_type: str
    properties: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ..., activity_type: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class EventEnvelope(_message.Message):
    __slots__ = ("attempt", "session", "placement", "activity")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptEvent
    session: SessionEvent
    placement: PlacementEvent
    activity: ActivityEvent
    def __init__(self, attempt: _Optional[_Union[AttemptEvent, _Mapping]] = ..., session: _Optional[_Union[SessionEvent, _Mapping]] = ..., placement: _Optional[_Union[PlacementEvent, _Mapping]] = ..., activity: _Optional[_Union[ActivityEvent, _Mapping]] = ...) -> None: ...
