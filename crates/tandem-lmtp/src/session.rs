//! The LMTP conversation (RFC 2033) as a state machine: lines in, replies and deliveries out.
//! No sockets, no store: the driver resolves recipients, stores the message, and reports one
//! result per recipient back with [`LmtpSession::delivered`].

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name in the greeting and the LHLO reply.
    pub hostname: String,
    /// Largest message accepted (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "tandem".into(),
            max_message_size: 64 << 20,
            max_recipients: 100,
        }
    }
}

/// An accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as given in RCPT TO.
    pub address: String,
    /// The account it delivers to.
    pub account: String,
}

/// A message to store, once DATA is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The envelope sender (empty for bounces).
    pub from: String,
    /// The accepted recipients, in order: one result is expected per recipient.
    pub recipients: Vec<Recipient>,
    /// The message, dot-unstuffed, lines ending in CRLF.
    pub message: Vec<u8>,
}

/// Why a recipient's copy was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Too large (552, permanent).
    TooBig,
    /// Out of disk, read-only, and the like: try again later (452).
    NoSpace(String),
    /// Anything else, also temporary (451): the sender keeps the message and retries, so a
    /// failure of ours never loses mail.
    Temporary(String),
    /// Stored here, but no peer confirmed holding it in time (peer durability): 451, and the
    /// retry waits for the same confirmation.
    NotReplicated,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send this reply line (without CRLF).
    Reply(String),
    /// Store this message, then call [`LmtpSession::delivered`].
    Deliver(Delivery),
    /// Close the connection (after the replies before it).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before LHLO.
    Start,
    /// After LHLO, no transaction.
    Ready,
    /// After MAIL FROM.
    Mail,
    /// Reading DATA lines.
    Data,
    /// Waiting for the driver's delivery results.
    Delivering,
}

/// One LMTP session.
#[derive(Debug)]
pub struct LmtpSession {
    cfg: SessionConfig,
    state: State,
    from: String,
    rcpts: Vec<Recipient>,
    data: Vec<u8>,
    too_big: bool,
}

/// The address inside `<...>` of a MAIL FROM / RCPT TO argument, and what follows it.
fn path_arg<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let rest = arg.get(..keyword.len())?;
    if !rest.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((&rest[..end], rest[end + 1..].trim()))
}

impl LmtpSession {
    /// A new session.
    pub fn new(cfg: SessionConfig) -> LmtpSession {
        LmtpSession {
            cfg,
            state: State::Start,
            from: String::new(),
            rcpts: Vec::new(),
            data: Vec::new(),
            too_big: false,
        }
    }

    /// The greeting line.
    pub fn greeting(&self) -> String {
        format!("220 {} LMTP Tandem ready", self.cfg.hostname)
    }

    /// Whether the session is reading message data (lines are then not commands).
    pub fn in_data(&self) -> bool {
        self.state == State::Data
    }

    fn reset(&mut self) {
        self.from.clear();
        self.rcpts.clear();
        self.data = Vec::new();
        self.too_big = false;
        if self.state != State::Start {
            self.state = State::Ready;
        }
    }

    /// One line from the client, without its line end. `resolve` maps a recipient address to
    /// the account it delivers to (`None`: unknown, 550).
    pub fn line(&mut self, line: &[u8], resolve: impl Fn(&str) -> Option<String>) -> Vec<Event> {
        if self.state == State::Data {
            return self.data_line(line);
        }
        if self.state == State::Delivering {
            return vec![Event::Reply(
                "503 5.5.1 waiting for the delivery to finish".into(),
            )];
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return vec![Event::Reply("500 5.5.2 command is not UTF-8".into())];
        };
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (text.trim(), ""),
        };
        let reply = |s: &str| vec![Event::Reply(s.to_owned())];
        match verb.to_ascii_uppercase().as_str() {
            "LHLO" => {
                if arg.is_empty() {
                    return reply("501 5.5.4 LHLO needs a host name");
                }
                self.state = State::Ready;
                self.reset();
                vec![
                    Event::Reply(format!("250-{}", self.cfg.hostname)),
                    Event::Reply("250-PIPELINING".into()),
                    Event::Reply("250-ENHANCEDSTATUSCODES".into()),
                    Event::Reply("250-8BITMIME".into()),
                    Event::Reply(format!("250 SIZE {}", self.cfg.max_message_size)),
                ]
            }
            "HELO" | "EHLO" => reply("500 5.5.1 this is LMTP: use LHLO"),
            "MAIL" => {
                if self.state == State::Start {
                    return reply("503 5.5.1 send LHLO first");
                }
                if self.state != State::Ready {
                    return reply("503 5.5.1 nested MAIL command");
                }
                let Some((from, params)) = path_arg(arg, "FROM:") else {
                    return reply("501 5.5.4 syntax: MAIL FROM:<address>");
                };
                for p in params.split_whitespace() {
                    if let Some(size) = p
                        .get(..5)
                        .filter(|k| k.eq_ignore_ascii_case("SIZE="))
                        .and_then(|_| p[5..].parse::<u64>().ok())
                        && size > self.cfg.max_message_size
                    {
                        return reply("552 5.3.4 message too big");
                    }
                }
                self.from = from.to_owned();
                self.state = State::Mail;
                reply("250 2.1.0 sender OK")
            }
            "RCPT" => {
                if self.state != State::Mail {
                    return reply("503 5.5.1 send MAIL first");
                }
                let Some((to, _)) = path_arg(arg, "TO:") else {
                    return reply("501 5.5.4 syntax: RCPT TO:<address>");
                };
                if self.rcpts.len() >= self.cfg.max_recipients {
                    return reply("452 4.5.3 too many recipients");
                }
                match resolve(to) {
                    Some(account) => {
                        self.rcpts.push(Recipient {
                            address: to.to_owned(),
                            account,
                        });
                        reply("250 2.1.5 recipient OK")
                    }
                    None => vec![Event::Reply(format!("550 5.1.1 <{to}>: no such user"))],
                }
            }
            "DATA" => {
                if self.state != State::Mail {
                    return reply("503 5.5.1 send MAIL first");
                }
                if self.rcpts.is_empty() {
                    return reply("503 5.5.1 no valid recipients");
                }
                self.state = State::Data;
                self.data = format!("Return-Path: <{}>\r\n", self.from).into_bytes();
                reply("354 go ahead, end with <CRLF>.<CRLF>")
            }
            "RSET" => {
                self.reset();
                reply("250 2.0.0 OK")
            }
            "NOOP" => reply("250 2.0.0 OK"),
            "VRFY" => reply("252 2.5.0 cannot verify, but will try"),
            "QUIT" => vec![
                Event::Reply(format!("221 2.0.0 {} closing", self.cfg.hostname)),
                Event::Close,
            ],
            "" => reply("500 5.5.2 empty command"),
            _ => reply("500 5.5.1 unknown command"),
        }
    }

    fn data_line(&mut self, line: &[u8]) -> Vec<Event> {
        if line == b"." {
            self.state = State::Delivering;
            if self.too_big {
                let n = self.rcpts.len();
                return self.delivered(vec![Err(DeliveryError::TooBig); n]);
            }
            return vec![Event::Deliver(Delivery {
                from: self.from.clone(),
                recipients: self.rcpts.clone(),
                message: std::mem::take(&mut self.data),
            })];
        }
        if self.too_big {
            return Vec::new();
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        if (self.data.len() + line.len() + 2) as u64 > self.cfg.max_message_size {
            // Keep reading to the end of the data, then refuse: the stream stays in sync.
            self.too_big = true;
            self.data = Vec::new();
            return Vec::new();
        }
        self.data.extend_from_slice(line);
        self.data.extend_from_slice(b"\r\n");
        Vec::new()
    }

    /// The results of a [`Event::Deliver`], one per recipient in order: the replies (RFC 2033
    /// §4.2: one per recipient).
    pub fn delivered(&mut self, results: Vec<Result<(), DeliveryError>>) -> Vec<Event> {
        let mut out = Vec::new();
        for (r, res) in self.rcpts.iter().zip(results) {
            out.push(Event::Reply(match res {
                Ok(()) => format!("250 2.0.0 <{}> delivered", r.address),
                Err(DeliveryError::TooBig) => {
                    format!("552 5.3.4 <{}> message too big", r.address)
                }
                Err(DeliveryError::NoSpace(e)) => {
                    format!("452 4.3.1 <{}> insufficient system storage: {e}", r.address)
                }
                Err(DeliveryError::Temporary(e)) => {
                    format!("451 4.3.0 <{}> temporary failure: {e}", r.address)
                }
                Err(DeliveryError::NotReplicated) => format!(
                    "451 4.4.0 <{}> stored here but no peer confirmed it yet: try again later",
                    r.address
                ),
            }));
        }
        self.state = State::Ready;
        self.reset();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(ev: &[Event]) -> Vec<String> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Reply(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    fn resolve(a: &str) -> Option<String> {
        (a.starts_with("alice@") || a.starts_with("bob@"))
            .then(|| a.split('@').next().unwrap_or("").to_owned())
    }

    #[test]
    fn a_transaction_with_two_recipients_and_one_unknown() {
        let mut s = LmtpSession::new(SessionConfig::default());
        assert!(s.greeting().starts_with("220 "));
        assert_eq!(
            replies(&s.line(b"MAIL FROM:<x@y>", resolve))[0],
            "503 5.5.1 send LHLO first"
        );
        let r = replies(&s.line(b"LHLO mx", resolve));
        assert!(r.last().is_some_and(|l| l.starts_with("250 SIZE")));
        assert!(replies(&s.line(b"MAIL FROM:<x@y> BODY=8BITMIME", resolve))[0].starts_with("250"));
        assert!(replies(&s.line(b"RCPT TO:<alice@example.com>", resolve))[0].starts_with("250"));
        assert!(replies(&s.line(b"RCPT TO:<nobody@example.com>", resolve))[0].starts_with("550"));
        assert!(replies(&s.line(b"RCPT TO:<bob@example.com>", resolve))[0].starts_with("250"));
        assert!(replies(&s.line(b"DATA", resolve))[0].starts_with("354"));
        assert!(s.line(b"Subject: hi", resolve).is_empty());
        assert!(s.line(b"", resolve).is_empty());
        assert!(s.line(b"..leading dot", resolve).is_empty());
        let ev = s.line(b".", resolve);
        let Some(Event::Deliver(d)) = ev.first() else {
            panic!("{ev:?}")
        };
        assert_eq!(d.recipients.len(), 2);
        assert_eq!(
            d.message,
            b"Return-Path: <x@y>\r\nSubject: hi\r\n\r\n.leading dot\r\n"
        );
        let r = replies(&s.delivered(vec![
            Ok(()),
            Err(DeliveryError::NoSpace("disk full".into())),
        ]));
        assert!(r[0].starts_with("250 2.0.0 <alice@"));
        assert!(r[1].starts_with("452 4.3.1 <bob@"));
        // The session is ready for the next transaction.
        assert!(replies(&s.line(b"MAIL FROM:<>", resolve))[0].starts_with("250"));
        assert!(replies(&s.line(b"QUIT", resolve))[0].starts_with("221"));
    }

    #[test]
    fn too_big_is_refused_after_the_data_and_by_size() {
        let mut s = LmtpSession::new(SessionConfig {
            max_message_size: 100,
            ..SessionConfig::default()
        });
        s.line(b"LHLO mx", resolve);
        assert!(replies(&s.line(b"MAIL FROM:<a@b> SIZE=1000", resolve))[0].starts_with("552"));
        s.line(b"MAIL FROM:<a@b>", resolve);
        s.line(b"RCPT TO:<alice@x>", resolve);
        s.line(b"DATA", resolve);
        for _ in 0..10 {
            assert!(s.line(&[b'x'; 50], resolve).is_empty());
        }
        let r = replies(&s.line(b".", resolve));
        assert_eq!(r.len(), 1);
        assert!(r[0].starts_with("552"), "{r:?}");
    }

    #[test]
    fn sequence_errors() {
        let mut s = LmtpSession::new(SessionConfig::default());
        s.line(b"LHLO mx", resolve);
        assert!(replies(&s.line(b"RCPT TO:<alice@x>", resolve))[0].starts_with("503"));
        assert!(replies(&s.line(b"DATA", resolve))[0].starts_with("503"));
        s.line(b"MAIL FROM:<a@b>", resolve);
        assert!(replies(&s.line(b"DATA", resolve))[0].starts_with("503"));
        assert!(replies(&s.line(b"MAIL FROM:<a@b>", resolve))[0].starts_with("503"));
        assert!(replies(&s.line(b"RCPT TO:alice", resolve))[0].starts_with("501"));
        assert!(replies(&s.line(b"FOO", resolve))[0].starts_with("500"));
        assert!(replies(&s.line(&[0xff, 0xfe], resolve))[0].starts_with("500"));
    }
}
