//! The client line protocol (PROTOCOL.md, "Client protocol"): bytes → [`Command`], and the reply lines.
//!
//! - `codec`: the framing, a `Decoder`: bytes in any split → lines and pieces of overlong lines.
//! - `lex`: the protocol's whitespace, field splitting, line ends.
//! - `num`: exact `D+[.D+]` decimal text and range checks on the digits.
//! - `parse`: `IAMAT` / `WHATSAT` lines into borrowed, validated commands.
//! - `time`: exact client times and the signed time difference of an `AT` line.
//! - `reply`: `? line` and `AT ...` formatting.

mod codec;
mod lex;
mod num;
mod parse;
mod reply;
mod time;

pub use codec::{Frame, LineCodec};
pub use lex::{Fields, fields, is_ws, strip_line_end};
pub use parse::{Command, IAmAt, ParseError, WhatsAt, iamat_of_fields, parse, parse_location};
pub use reply::{write_at_line, write_question};
pub use time::{ClientTime, Timestamp, write_time_diff};
