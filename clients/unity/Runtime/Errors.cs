// Error codes (PROTOCOL.md section 7) plus the client's own, and the typed error passed to callbacks.
using System;
using System.Collections.Generic;

namespace Troubadour
{
    public static class ErrorCodes
    {
        // Sent by the server.
        public const string BadRequest = "bad_request";
        public const string UnsupportedVersion = "unsupported_version";
        public const string UnknownType = "unknown_type";
        public const string TooLarge = "too_large";
        public const string InvalidParam = "invalid_param";
        public const string EmptyPrompt = "empty_prompt";
        public const string UnknownContext = "unknown_context";
        public const string ProfileError = "profile_error";
        public const string Busy = "busy";
        public const string Cancelled = "cancelled";
        public const string NotFound = "not_found";
        public const string EngineError = "engine_error";
        public const string EngineDead = "engine_dead";
        public const string ModelError = "model_error";
        public const string Internal = "internal";

        // Raised by this client, never sent by a server.
        public const string ConnectionLost = "connection_lost";     // dropped and not resendable (or resent too often)
        public const string Timeout = "timeout";                    // no reply in time
        public const string ChecksumMismatch = "checksum_mismatch"; // audio bytes do not match `sha256`
        public const string MessageLost = "message_lost";           // gap in `seq`
        public const string InvalidReply = "invalid_reply";         // the server sent something malformed
        public const string Closed = "closed";                      // the client was disposed

        static readonly HashSet<string> Known = new HashSet<string> {
            BadRequest, UnsupportedVersion, UnknownType, TooLarge, InvalidParam, EmptyPrompt, UnknownContext,
            ProfileError, Busy, Cancelled, NotFound, EngineError, EngineDead, ModelError, Internal,
            ConnectionLost, Timeout, ChecksumMismatch, MessageLost, InvalidReply, Closed };

        /// <summary>The code as the client should treat it: unknown codes count as internal (section 7).</summary>
        public static string Normalize(string code)
        {
            return code != null && Known.Contains(code) ? code : Internal;
        }
    }

    /// <summary>A failed request: Code (ErrorCodes), Message (for humans), Field (path of the field at fault, or null).</summary>
    public sealed class TroubadourError
    {
        public readonly string Code;
        public readonly string Message;
        public readonly string Field;
        /// <summary>The code exactly as received (Code is normalized: unknown codes become "internal").</summary>
        public readonly string RawCode;

        public TroubadourError(string code, string message, string field = null)
        {
            RawCode = code;
            Code = ErrorCodes.Normalize(code);
            Message = message ?? "";
            Field = field;
        }

        /// <summary>True when sending the request again later may succeed (PROTOCOL.md section 7).</summary>
        public bool IsRetryable
        {
            get
            {
                switch (Code)
                {
                    case ErrorCodes.Busy: case ErrorCodes.NotFound: case ErrorCodes.EngineDead:
                    case ErrorCodes.ConnectionLost: case ErrorCodes.Timeout: case ErrorCodes.MessageLost:
                    case ErrorCodes.ChecksumMismatch:
                        return true;
                    default:
                        return false;
                }
            }
        }

        public override string ToString()
        {
            return Code + (Field != null ? " (" + Field + ")" : "") + ": " + Message;
        }
    }

    /// <summary>A message that breaks the protocol: Code is bad_request, unsupported_version, unknown_type or
    /// too_large; Id is the request id when it could be read.</summary>
    public sealed class ProtocolException : Exception
    {
        public readonly string Code;
        public readonly string Field;
        public object Id;

        public ProtocolException(string code, string message, string field = null, object id = null) : base(message)
        {
            Code = code;
            Field = field;
            Id = id;
        }
    }
}
