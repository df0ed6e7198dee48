//! A BER tokenizer over a byte stream.
//!
//! It keeps a stack of the constructed elements it is inside (definite or indefinite
//! length) and asks a [`Driver`] what to do with each new element: descend into it,
//! capture it whole (small elements: algorithm identifiers, recipient and signer
//! information, which are then read with the slice reader in [`crate::der`]), skip it
//! (certificates we do not use), or stream its content octets (the one large element of a
//! CMS structure: primitive, or constructed from OCTET STRING segments as `openssl cms
//! -stream` writes it). Memory is bounded by the capture limit and the nesting limit,
//! whatever the input's size.

use crate::der::MAX_NESTING;
use crate::error::{As2Error, Result};

/// What to do with an element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action<R> {
    /// Read its children, in the given role.
    Descend(R),
    /// Hand it over whole (identifier, length and content) when it has ended.
    Capture,
    /// Pass over it.
    Skip,
    /// Hand over its content octets as they arrive (an OCTET STRING, primitive or
    /// constructed).
    Stream,
}

/// Decides about elements and receives what was captured or streamed.
pub(crate) trait Driver {
    /// What a descended-into element is to the driver.
    type Role: Copy;

    /// A new element, the `index`-th child of `parent` (`None`: the outermost element).
    fn element(
        &mut self,
        parent: Option<Self::Role>,
        index: usize,
        tag: u8,
        length: Option<u64>,
    ) -> Result<Action<Self::Role>>;

    /// A captured element, complete.
    fn captured(&mut self, parent: Option<Self::Role>, index: usize, raw: &[u8]) -> Result<()>;

    /// Content octets of a streamed element.
    fn content(&mut self, data: &[u8]) -> Result<()>;

    /// A descended-into element ended after `children` children.
    fn end(&mut self, role: Self::Role, children: usize) -> Result<()>;
}

#[derive(Clone, Copy)]
enum FrameKind<R> {
    Role(R),
    Captured,
    Skipped,
    Octets,
}

struct Frame<R> {
    kind: FrameKind<R>,
    /// Content bytes left (`None`: indefinite length, ended by end-of-contents).
    remaining: Option<u64>,
    children: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Capture,
    Skip,
    Stream,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Content {
        remaining: u64,
        mode: Mode,
    },
    /// The outermost element has ended; only zero padding may follow.
    Trailer,
}

struct Capture<R> {
    /// Stack depth at which the captured element started.
    depth: usize,
    parent: Option<R>,
    index: usize,
    bytes: Vec<u8>,
}

/// The tokenizer state.
pub(crate) struct BerStream<R> {
    frames: Vec<Frame<R>>,
    state: State,
    header: Vec<u8>,
    capture: Option<Capture<R>>,
    max_capture: usize,
    started: bool,
}

impl<R: Copy> BerStream<R> {
    /// A tokenizer that captures elements of at most `max_capture` bytes.
    pub(crate) fn new(max_capture: usize) -> Self {
        Self {
            frames: Vec::new(),
            state: State::Header,
            header: Vec::with_capacity(10),
            capture: None,
            max_capture,
            started: false,
        }
    }

    pub(crate) fn push<D: Driver<Role = R>>(&mut self, data: &[u8], driver: &mut D) -> Result<()> {
        let mut input = data;
        while !input.is_empty() {
            match self.state {
                State::Trailer => {
                    if input.iter().any(|b| *b != 0) {
                        return Err(As2Error::cms("trailing bytes after the outer element"));
                    }
                    return Ok(());
                }
                State::Header => {
                    let (&byte, rest) = input.split_first().unwrap_or((&0, &[]));
                    input = rest;
                    self.header.push(byte);
                    if let Some((tag, length)) = parse_header(&self.header)? {
                        let header = std::mem::take(&mut self.header);
                        self.on_header(tag, length, &header, driver)?;
                        self.header = header;
                        self.header.clear();
                    }
                }
                State::Content { remaining, mode } => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let (now, rest) = input.split_at(take);
                    input = rest;
                    self.account(take as u64)?;
                    match mode {
                        Mode::Capture => self.append_capture(now)?,
                        Mode::Skip => {}
                        Mode::Stream => driver.content(now)?,
                    }
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.state = State::Header;
                        self.element_done(driver)?;
                    } else {
                        self.state = State::Content { remaining, mode };
                    }
                }
            }
        }
        Ok(())
    }

    /// The end of input: the outermost element must have ended.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.state == State::Trailer {
            return Ok(());
        }
        Err(As2Error::cms(if self.started {
            "truncated CMS data"
        } else {
            "empty CMS data"
        }))
    }

    fn on_header<D: Driver<Role = R>>(
        &mut self,
        tag: u8,
        length: Option<u64>,
        header: &[u8],
        driver: &mut D,
    ) -> Result<()> {
        let header_length = header.len() as u64;
        if tag == 0 {
            // End-of-contents closes the innermost indefinite-length element.
            if length != Some(0) || self.frames.last().is_none_or(|f| f.remaining.is_some()) {
                return Err(As2Error::cms("misplaced end-of-contents"));
            }
            self.account(header_length)?;
            self.append_capture(header)?;
            if let Some(frame) = self.frames.pop() {
                self.frame_closed(frame, driver)?;
            }
            return self.element_done(driver);
        }
        if tag & 0x1f == 0x1f {
            return Err(As2Error::cms("high tag numbers are not supported"));
        }
        if self.frames.is_empty() && self.started {
            return Err(As2Error::cms("trailing bytes after the outer element"));
        }
        self.account(header_length)?;
        let constructed = tag & 0x20 != 0;
        if length.is_none() && !constructed {
            return Err(As2Error::cms("indefinite length on a primitive element"));
        }
        if self.frames.len() >= MAX_NESTING {
            return Err(As2Error::cms("elements nested too deeply"));
        }
        let (parent_kind, index) = match self.frames.last_mut() {
            Some(top) => {
                if let (Some(length), Some(room)) = (length, top.remaining)
                    && length > room
                {
                    return Err(As2Error::cms("element longer than its parent"));
                }
                top.children += 1;
                (Some(top.kind), top.children - 1)
            }
            None => (None, 0),
        };
        self.started = true;
        let content_mode = match parent_kind {
            Some(FrameKind::Captured) | Some(FrameKind::Skipped) => {
                let captured = matches!(parent_kind, Some(FrameKind::Captured));
                if captured {
                    self.append_capture(header)?;
                }
                let (kind, mode) = if captured {
                    (FrameKind::Captured, Mode::Capture)
                } else {
                    (FrameKind::Skipped, Mode::Skip)
                };
                self.open(constructed, length, kind, mode)
            }
            Some(FrameKind::Octets) => {
                if tag & !0x20 != 0x04 {
                    return Err(As2Error::cms(
                        "constructed OCTET STRING holds a non-OCTET STRING",
                    ));
                }
                self.open(constructed, length, FrameKind::Octets, Mode::Stream)
            }
            Some(FrameKind::Role(role)) => {
                let action = driver.element(Some(role), index, tag, length)?;
                self.act(action, Some(role), index, constructed, length, header)?
            }
            None => {
                let action = driver.element(None, 0, tag, length)?;
                self.act(action, None, 0, constructed, length, header)?
            }
        };
        if let Some(mode) = content_mode {
            let remaining = length.unwrap_or(0);
            self.state = State::Content { remaining, mode };
            if remaining > 0 {
                return Ok(());
            }
            self.state = State::Header;
        }
        self.element_done(driver)
    }

    fn act(
        &mut self,
        action: Action<R>,
        parent: Option<R>,
        index: usize,
        constructed: bool,
        length: Option<u64>,
        header: &[u8],
    ) -> Result<Option<Mode>> {
        Ok(match action {
            Action::Descend(role) => {
                if !constructed {
                    return Err(As2Error::cms("expected a constructed element"));
                }
                self.frames.push(Frame {
                    kind: FrameKind::Role(role),
                    remaining: length,
                    children: 0,
                });
                None
            }
            Action::Capture => {
                self.capture = Some(Capture {
                    depth: self.frames.len(),
                    parent,
                    index,
                    bytes: Vec::new(),
                });
                self.append_capture(header)?;
                self.open(constructed, length, FrameKind::Captured, Mode::Capture)
            }
            Action::Skip => self.open(constructed, length, FrameKind::Skipped, Mode::Skip),
            Action::Stream => self.open(constructed, length, FrameKind::Octets, Mode::Stream),
        })
    }

    /// Opens a constructed element as a frame, or returns the mode for a primitive one's
    /// content.
    fn open(
        &mut self,
        constructed: bool,
        length: Option<u64>,
        kind: FrameKind<R>,
        mode: Mode,
    ) -> Option<Mode> {
        if constructed {
            self.frames.push(Frame {
                kind,
                remaining: length,
                children: 0,
            });
            None
        } else {
            Some(mode)
        }
    }

    /// Counts consumed bytes against every enclosing definite-length element.
    fn account(&mut self, length: u64) -> Result<()> {
        for frame in &mut self.frames {
            if let Some(remaining) = &mut frame.remaining {
                *remaining = remaining
                    .checked_sub(length)
                    .ok_or_else(|| As2Error::cms("element longer than its parent"))?;
            }
        }
        Ok(())
    }

    fn append_capture(&mut self, data: &[u8]) -> Result<()> {
        if let Some(capture) = &mut self.capture {
            if capture.bytes.len() + data.len() > self.max_capture {
                return Err(As2Error::LimitExceeded(format!(
                    "a CMS element larger than {} bytes",
                    self.max_capture
                )));
            }
            capture.bytes.extend_from_slice(data);
        }
        Ok(())
    }

    /// After an element's content or a frame ended: hands over a finished capture and
    /// closes the definite-length frames that have no bytes left.
    fn element_done<D: Driver<Role = R>>(&mut self, driver: &mut D) -> Result<()> {
        loop {
            if self
                .capture
                .as_ref()
                .is_some_and(|c| c.depth == self.frames.len())
                && let Some(capture) = self.capture.take()
            {
                driver.captured(capture.parent, capture.index, &capture.bytes)?;
            }
            match self.frames.last() {
                Some(frame) if frame.remaining == Some(0) => {
                    if let Some(frame) = self.frames.pop() {
                        self.frame_closed(frame, driver)?;
                    }
                }
                _ => break,
            }
        }
        if self.frames.is_empty() && self.started {
            self.state = State::Trailer;
        }
        Ok(())
    }

    fn frame_closed<D: Driver<Role = R>>(&mut self, frame: Frame<R>, driver: &mut D) -> Result<()> {
        if let FrameKind::Role(role) = frame.kind {
            driver.end(role, frame.children)?;
        }
        Ok(())
    }
}

/// Identifier and length of an element header, once complete.
fn parse_header(header: &[u8]) -> Result<Option<(u8, Option<u64>)>> {
    let (Some(&tag), Some(&first)) = (header.first(), header.get(1)) else {
        return Ok(None);
    };
    if first < 0x80 {
        return Ok(Some((tag, Some(u64::from(first)))));
    }
    if first == 0x80 {
        return Ok(Some((tag, None)));
    }
    let count = usize::from(first & 0x7f);
    if count > 8 {
        return Err(As2Error::cms("length too large"));
    }
    let Some(bytes) = header.get(2..2 + count) else {
        return Ok(None);
    };
    let length = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Ok(Some((tag, Some(length))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::der;

    /// Descends into SEQUENCEs, captures INTEGERs, streams OCTET STRINGs.
    #[derive(Default)]
    struct Recorder {
        captured: Vec<Vec<u8>>,
        streamed: Vec<u8>,
        ended: usize,
    }

    impl Driver for Recorder {
        type Role = ();
        fn element(
            &mut self,
            _: Option<()>,
            _: usize,
            tag: u8,
            _: Option<u64>,
        ) -> Result<Action<()>> {
            Ok(match tag {
                0x30 => Action::Descend(()),
                0x04 | 0x24 => Action::Stream,
                0x31 => Action::Skip,
                _ => Action::Capture,
            })
        }
        fn captured(&mut self, _: Option<()>, _: usize, raw: &[u8]) -> Result<()> {
            self.captured.push(raw.to_vec());
            Ok(())
        }
        fn content(&mut self, data: &[u8]) -> Result<()> {
            self.streamed.extend_from_slice(data);
            Ok(())
        }
        fn end(&mut self, _: (), _: usize) -> Result<()> {
            self.ended += 1;
            Ok(())
        }
    }

    fn run(data: &[u8], piece: usize) -> Result<Recorder> {
        let mut stream = BerStream::new(1024);
        let mut recorder = Recorder::default();
        for chunk in data.chunks(piece.max(1)) {
            stream.push(chunk, &mut recorder)?;
        }
        stream.finish()?;
        Ok(recorder)
    }

    #[test]
    fn definite_and_indefinite_encodings_give_the_same_events_in_any_split() {
        let definite = der::sequence(&[
            &der::small_integer(300),
            &der::octet_string(b"abc"),
            &der::set_of(&[&der::null()]),
            &der::sequence(&[&der::octet_string(b"de")]),
        ]);
        let indefinite = [
            &[0x30, 0x80][..],
            &der::small_integer(300),
            &[
                0x24, 0x80, 0x04, 0x01, b'a', 0x24, 0x80, 0x04, 0x02, b'b', b'c', 0, 0, 0, 0,
            ],
            &[0x31, 0x80, 0x05, 0x00, 0, 0],
            &[0x30, 0x80, 0x04, 0x02, b'd', b'e', 0, 0],
            &[0, 0, 0, 0],
        ]
        .concat();
        for data in [&definite, &indefinite] {
            for piece in 1..=data.len() {
                let recorder = run(data, piece).unwrap();
                assert_eq!(recorder.captured, vec![der::small_integer(300)]);
                assert_eq!(recorder.streamed, b"abcde");
                assert_eq!(recorder.ended, 2);
            }
        }
    }

    #[test]
    fn truncation_overruns_and_trailing_bytes_fail() {
        let data = der::sequence(&[&der::octet_string(b"abc")]);
        assert!(run(data.get(..data.len() - 1).unwrap(), 2).is_err());
        assert!(run(&[0x30, 0x03, 0x04, 0x05, 1, 2, 3], 1).is_err());
        assert!(run(&[&data[..], &[1]].concat(), 1).is_err());
        assert!(run(&[&data[..], &[0, 0]].concat(), 1).is_ok());
        assert!(run(&[0x30, 0x80, 0x04, 0x01, b'x'], 1).is_err());
        let mut nested = [0x30u8, 0x80].repeat(200);
        nested.extend(vec![0u8; 400]);
        assert!(run(&nested, 7).is_err());
        let big = der::sequence(&[&der::small_integer(1), &der::encode(0x02, &[1; 2000])]);
        assert!(matches!(run(&big, 100), Err(As2Error::LimitExceeded(_))));
    }
}
