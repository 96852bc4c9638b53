from tandem.v1 import decoder_pb2 as _decoder_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "text", "target_language", "max_new_tokens", "local_only", "deadline_ms", "audio")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    target_language: str
    max_new_tokens: int
    local_only: bool
    deadline_ms: int
    audio: AudioInput
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., target_language: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., local_only: _Optional[bool] = ..., deadline_ms: _Optional[int] = ..., audio: _Optional[_Union[AudioInput, _Mapping]] = ...) -> None: ...

class AudioInput(_message.Message):
    __slots__ = ("wav", "language")
    WAV_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    wav: bytes
    language: str
    def __init__(self, wav: _Optional[bytes] = ..., language: _Optional[str] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("piece", "final")
    PIECE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    piece: TextPiece
    final: GenerateFinal
    def __init__(self, piece: _Optional[_Union[TextPiece, _Mapping]] = ..., final: _Optional[_Union[GenerateFinal, _Mapping]] = ...) -> None: ...

class TextPiece(_message.Message):
    __slots__ = ("text", "ids", "start")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    text: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    start: int
    def __init__(self, text: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., start: _Optional[int] = ...) -> None: ...

class GenerateFinal(_message.Message):
    __slots__ = ("route", "reason", "fallbacks", "encode_ms", "upload_ms", "first_token_ms", "total_ms", "text", "ids", "token_count", "finish_reason")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    route: str
    reason: str
    fallbacks: _containers.RepeatedScalarFieldContainer[str]
    encode_ms: float
    upload_ms: float
    first_token_ms: float
    total_ms: float
    text: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    token_count: int
    finish_reason: _decoder_pb2.FinishReason
    def __init__(self, route: _Optional[str] = ..., reason: _Optional[str] = ..., fallbacks: _Optional[_Iterable[str]] = ..., encode_ms: _Optional[float] = ..., upload_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., text: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., token_count: _Optional[int] = ..., finish_reason: _Optional[_Union[_decoder_pb2.FinishReason, str]] = ...) -> None: ...
