//! The XMPP stream read over quick-xml, stanza by stanza, into element
//! trees ([`tree`]) of bounded size and depth: a stanza over
//! `max_stanza_size` bytes or nested deeper than `max_stanza_depth`
//! elements is refused before it is built. The reader keeps its open
//! elements and namespace declarations on heap stacks and resolves a
//! prefix in constant time, so neither depth nor the number of
//! declarations costs call stack or quadratic time.

pub mod tree;

pub use tree::{Element, Node};

use std::collections::HashMap;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quick_xml::events::{BytesRef, BytesStart, Event};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// Why reading the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A stanza passed `max_stanza_size` (the limit, in bytes).
    #[error("stanza larger than {0} bytes")]
    TooBig(usize),
    /// A stanza nested elements deeper than `max_stanza_depth` (the limit).
    #[error("stanza nested deeper than {0} elements")]
    TooDeep(usize),
    /// Not well-formed XML, or XML that XMPP forbids (DOCTYPE, entities,
    /// undeclared prefixes).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended (its end tag, or EOF).
    #[error("the server closed the stream")]
    Closed,
}

impl ReadError {
    /// For a stanza over a limit: the limit's config key and its value.
    pub fn limit(&self) -> Option<(&'static str, usize)> {
        match self {
            Self::TooBig(max) => Some(("max_stanza_size", *max)),
            Self::TooDeep(max) => Some(("max_stanza_depth", *max)),
            _ => None,
        }
    }
}

/// Counts bytes read from the socket and refuses to read more than the
/// budget allows: bounds what the XML parser can buffer before a stanza
/// is complete (the budget is refilled at each stanza boundary).
pub struct Limited<R> {
    inner: R,
    budget: Arc<AtomicUsize>,
    scratch: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Limited<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let left = self.budget.load(Ordering::Relaxed);
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::other("stanza size limit reached")));
        }
        let n = if left >= buf.remaining() {
            let before = buf.filled().len();
            let this = &mut *self;
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => buf.filled().len() - before,
                other => return other,
            }
        } else {
            // Read at most `left` bytes through a scratch buffer.
            let this = &mut *self;
            this.scratch.resize(left, 0);
            let mut small = ReadBuf::new(&mut this.scratch[..left]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut small) {
                Poll::Ready(Ok(())) => {
                    let got = small.filled().len();
                    buf.put_slice(&this.scratch[..got]);
                    got
                }
                other => return other,
            }
        };
        self.budget.fetch_sub(n.min(left), Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// Reads the component stream: the stream header, then one stanza at a
/// time.
pub struct StreamReader<R> {
    reader: quick_xml::Reader<BufReader<Limited<R>>>,
    budget: Arc<AtomicUsize>,
    limits: Limits,
    buf: Vec<u8>,
    /// Namespace declarations in scope: the stream header's between
    /// stanzas, more while a stanza is read.
    scope: Scope,
    /// How many declarations the stream header made (the scope between
    /// stanzas).
    root: usize,
}

/// What a stanza may take; a stanza over either limit is refused.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of a stanza (`max_stanza_size`).
    pub max_stanza: usize,
    /// Elements nested in a stanza, the stanza itself counting 1
    /// (`max_stanza_depth`).
    pub max_depth: usize,
}

/// Bytes the buffered reader may read ahead past a stanza.
const READ_AHEAD: usize = 8192;

impl<R: AsyncRead + Unpin> StreamReader<R> {
    /// A reader of `inner` refusing stanzas over `limits` (and reading at
    /// most `max_stanza` + 8 KiB ahead of a stanza's start).
    pub fn new(inner: R, limits: Limits) -> Self {
        let budget = Arc::new(AtomicUsize::new(limits.max_stanza + READ_AHEAD));
        let limited = Limited {
            inner,
            budget: budget.clone(),
            scratch: Vec::new(),
        };
        let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(READ_AHEAD, limited));
        let config = reader.config_mut();
        config.trim_text(false);
        config.check_end_names = true;
        Self {
            reader,
            budget,
            limits,
            buf: Vec::with_capacity(4096),
            scope: Scope::default(),
            root: 0,
        }
    }

    fn xml_err(e: impl std::fmt::Display) -> ReadError {
        let s = e.to_string();
        if s.contains("stanza size limit") {
            ReadError::TooBig(0)
        } else {
            ReadError::Xml(s)
        }
    }

    /// The server's `<stream:stream>` header.
    pub async fn header(&mut self) -> Result<Element, ReadError> {
        loop {
            self.buf.clear();
            let ev = self
                .reader
                .read_event_into_async(&mut self.buf)
                .await
                .map_err(Self::xml_err)?;
            match ev {
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Text(t) if t.xml10_content().trim().is_empty() => {}
                Event::Start(s) => {
                    let mut header = start_element(&s)?;
                    self.scope = Scope::default();
                    self.root = resolve(&mut header, &mut self.scope)?;
                    return Ok(header);
                }
                Event::Eof => return Err(ReadError::Closed),
                other => return Err(ReadError::Xml(format!("expected a stream header, got {other:?}"))),
            }
        }
    }

    /// The next stanza; `Err(Closed)` at the end of the stream (its end
    /// tag or EOF), `Err(TooBig)` once it passes `max_stanza` bytes,
    /// `Err(TooDeep)` at its first element nested deeper than `max_depth`.
    pub async fn next(&mut self) -> Result<Element, ReadError> {
        let start = self.reader.buffer_position();
        // Only the header's declarations (an earlier call may have failed
        // inside a stanza).
        self.scope.truncate(self.root);
        let max = self.limits.max_stanza;
        let mut partial = Partial::new(&mut self.scope, self.limits.max_depth);
        loop {
            self.buf.clear();
            let ev = self
                .reader
                .read_event_into_async(&mut self.buf)
                .await
                .map_err(|e| match Self::xml_err(e) {
                    ReadError::TooBig(_) => ReadError::TooBig(max),
                    other => other,
                })?;
            if self.reader.buffer_position() - start > max as u64 {
                return Err(ReadError::TooBig(max));
            }
            if let Some(stanza) = partial.feed(ev)? {
                self.budget.store(max + READ_AHEAD, Ordering::Relaxed);
                return Ok(stanza);
            }
        }
    }
}

/// Namespace declarations in scope, resolved in constant time whatever
/// their number (a list searched from the innermost would make a stanza
/// declaring many prefixes quadratic to read).
#[derive(Default)]
struct Scope {
    /// Prefix (`""` for the default namespace) → its URIs, innermost last.
    /// The URIs are shared with every element resolved to them.
    bindings: HashMap<String, Vec<Arc<str>>>,
    /// Prefixes in declaration order, to undo the innermost first.
    declared: Vec<String>,
}

impl Scope {
    fn declare(&mut self, prefix: &str, uri: &str) {
        self.bindings.entry(prefix.to_owned()).or_default().push(Arc::from(uri));
        self.declared.push(prefix.to_owned());
    }

    /// The URI `prefix` is bound to.
    fn lookup(&self, prefix: &str) -> Option<&Arc<str>> {
        self.bindings.get(prefix)?.last()
    }

    /// Declarations made so far.
    fn len(&self) -> usize {
        self.declared.len()
    }

    /// Undo declarations back to the first `len`.
    fn truncate(&mut self, len: usize) {
        while self.declared.len() > len {
            let Some(prefix) = self.declared.pop() else { break };
            if let Some(uris) = self.bindings.get_mut(&prefix) {
                uris.pop();
                if uris.is_empty() {
                    self.bindings.remove(&prefix);
                }
            }
        }
    }
}

/// A stanza being read: its open elements, and the namespace declarations
/// in scope.
struct Partial<'s> {
    /// Open elements, the stanza first.
    stack: Vec<Element>,
    /// Declarations in scope, the stream header's first.
    scope: &'s mut Scope,
    /// The scope's length before each open element's declarations.
    marks: Vec<usize>,
    /// Deepest nesting allowed (the stanza is depth 1).
    max_depth: usize,
}

impl<'s> Partial<'s> {
    fn new(scope: &'s mut Scope, max_depth: usize) -> Self {
        Self {
            stack: Vec::new(),
            scope,
            marks: Vec::new(),
            max_depth,
        }
    }

    /// Take one event; the stanza once its end is read.
    fn feed(&mut self, ev: Event<'_>) -> Result<Option<Element>, ReadError> {
        match ev {
            Event::Start(s) => {
                let e = self.open(&s)?;
                self.stack.push(e);
                Ok(None)
            }
            Event::Empty(s) => {
                let e = self.open(&s)?;
                self.scope.truncate(self.marks.pop().unwrap_or(0));
                Ok(self.attach(e))
            }
            Event::End(_) => self.close(),
            Event::Text(t) => {
                if let Some(top) = self.stack.last_mut() {
                    push_text(top, &t.xml10_content());
                }
                Ok(None)
            }
            Event::CData(c) => {
                if let Some(top) = self.stack.last_mut() {
                    let text: &str = c.as_ref();
                    push_text(top, text);
                }
                Ok(None)
            }
            Event::GeneralRef(r) => {
                let ch = entity(&r)?;
                if let Some(top) = self.stack.last_mut() {
                    push_text(top, &ch);
                }
                Ok(None)
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => Ok(None),
            Event::DocType(_) => Err(ReadError::Xml("DOCTYPE is not allowed in XMPP".into())),
            Event::Eof => Err(ReadError::Closed),
        }
    }

    /// A start (or empty-element) tag: check its depth, read it, and
    /// bring its declarations into scope (marking where they begin).
    fn open(&mut self, s: &BytesStart<'_>) -> Result<Element, ReadError> {
        if self.stack.len() >= self.max_depth {
            return Err(ReadError::TooDeep(self.max_depth));
        }
        let mut e = start_element(s)?;
        self.marks.push(self.scope.len());
        resolve(&mut e, self.scope)?;
        Ok(e)
    }

    /// An end tag: close the innermost element; `Closed` when none is open
    /// (`</stream:stream>`).
    fn close(&mut self) -> Result<Option<Element>, ReadError> {
        let e = self.stack.pop().ok_or(ReadError::Closed)?;
        let mark = self.marks.pop().unwrap_or(0);
        self.scope.truncate(mark);
        Ok(self.attach(e))
    }

    /// Add a complete element to its parent; the stanza when it has none.
    fn attach(&mut self, e: Element) -> Option<Element> {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.children.push(Node::Element(e));
                None
            }
            None => Some(e),
        }
    }
}

/// The text of a character or predefined entity reference (`&#x1F600;`,
/// `&amp;`); other entities are refused (XMPP has no DTD).
fn entity(r: &BytesRef<'_>) -> Result<String, ReadError> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| ReadError::Xml(e.to_string()))? {
        return Ok(c.to_string());
    }
    Ok(match r.as_ref() {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        other => return Err(ReadError::Xml(format!("unknown entity &{other};"))),
    }
    .to_owned())
}

/// Add `e`'s namespace declarations to `scope` and resolve its name's
/// namespace; returns how many declarations were added.
fn resolve(e: &mut Element, scope: &mut Scope) -> Result<usize, ReadError> {
    let mut n = 0;
    for (k, v) in &e.attrs {
        let prefix = if k == "xmlns" {
            ""
        } else if let Some(p) = k.strip_prefix("xmlns:") {
            p
        } else {
            continue;
        };
        scope.declare(prefix, v);
        n += 1;
    }
    let prefix = match e.name.split_once(':') {
        Some((p, _)) => p,
        None => "",
    };
    let uri = scope.lookup(prefix);
    if uri.is_none() && !prefix.is_empty() && prefix != "xml" {
        return Err(ReadError::Xml(format!(
            "undeclared namespace prefix {prefix:?} on <{}>",
            e.name
        )));
    }
    e.namespace = uri.filter(|u| !u.is_empty()).cloned();
    Ok(n)
}

fn push_text(e: &mut Element, t: &str) {
    if let Some(Node::Text(last)) = e.children.last_mut() {
        last.push_str(t);
    } else {
        e.children.push(Node::Text(t.to_owned()));
    }
}

fn start_element(s: &BytesStart<'_>) -> Result<Element, ReadError> {
    let qname = s.name();
    let name: &str = qname.as_ref();
    let name = xml_name(name)?.to_owned();
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| ReadError::Xml(e.to_string()))?;
        let k: &str = a.key.as_ref();
        let k = xml_name(k)?.to_owned();
        let v = a
            .normalized_value(quick_xml::XmlVersion::Explicit1_0)
            .map_err(|e| ReadError::Xml(e.to_string()))?
            .into_owned();
        attrs.push((k, v));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        namespace: None,
    })
}

/// `name` if it is an XML 1.0 `Name` (§2.3), else an error. quick-xml is
/// lax: it reads `<\t/>` as an element named "" (written back: `</>`, an
/// end tag) and takes quotes into attribute names (written back: an
/// attribute value that never closes); both found by fuzzing.
fn xml_name(name: &str) -> Result<&str, ReadError> {
    let mut chars = name.chars();
    if chars.next().is_some_and(is_name_start) && chars.all(is_name_char) {
        Ok(name)
    } else {
        Err(ReadError::Xml(format!("invalid XML name {name:?}")))
    }
}

/// XML 1.0 `NameStartChar`.
fn is_name_start(c: char) -> bool {
    matches!(c, ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar`.
fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_stanza: usize) -> Limits {
        Limits {
            max_stanza,
            max_depth: 64,
        }
    }

    #[tokio::test]
    async fn namespaces_resolve_through_prefixes_and_inheritance() {
        let s = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>\
                 <iq><a:q xmlns:a='urn:a'><a:r/><s xmlns='urn:s'><t/></s><u/></a:q></iq><stream:error/>\
                 <iq><b:q/></iq>";
        let mut r = StreamReader::new(s.as_bytes(), limits(4096));
        let h = r.header().await.unwrap();
        assert_eq!(h.ns(), Some("http://etherx.jabber.org/streams"));
        let iq = r.next().await.unwrap();
        assert_eq!(iq.ns(), Some("jabber:component:accept"), "inherited from the stream");
        let q = iq.find("q", Some("urn:a")).unwrap();
        assert_eq!(q.find("r", None).unwrap().ns(), Some("urn:a"));
        let sub = q.find("s", None).unwrap();
        assert_eq!(sub.ns(), Some("urn:s"));
        assert_eq!(sub.find("t", None).unwrap().ns(), Some("urn:s"), "default inherited");
        // The default is back to the stream's after <s> closes; the prefix
        // `a` binds only the element's name.
        assert_eq!(q.find("u", None).unwrap().ns(), Some("jabber:component:accept"));
        let err = r.next().await.unwrap();
        assert_eq!(
            (err.local(), err.ns()),
            ("error", Some("http://etherx.jabber.org/streams"))
        );
        match r.next().await {
            Err(ReadError::Xml(e)) => assert!(e.contains("undeclared namespace prefix \"b\""), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    async fn parse(input: &str, max: usize) -> Vec<Result<Element, String>> {
        let mut r = StreamReader::new(input.as_bytes(), limits(max));
        let mut out = vec![r.header().await.map_err(|e| e.to_string())];
        loop {
            match r.next().await {
                Ok(e) => out.push(Ok(e)),
                Err(ReadError::Closed) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn stanzas_with_entities_and_namespaces() {
        let s = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='3BF96D32' from='push.localhost'><handshake/>\
                 <iq type='set' id='a&amp;b' from='alice@localhost/x'><q xmlns='urn:x'>1 &lt; 2 &#x1F600; <![CDATA[<raw>]]></q></iq> </stream:stream>";
        let out = parse(s, 65536).await;
        let header = out[0].as_ref().unwrap();
        assert_eq!(header.get("id"), Some("3BF96D32"));
        assert_eq!(out[1].as_ref().unwrap().name, "handshake");
        let iq = out[2].as_ref().unwrap();
        assert_eq!(iq.get("id"), Some("a&b"));
        let q = iq.find("q", Some("urn:x")).unwrap();
        assert_eq!(q.text_content(), "1 < 2 😀 <raw>");
        assert_eq!(out.len(), 3);
    }

    #[tokio::test]
    async fn oversized_stanza_is_refused() {
        let big = "x".repeat(5000);
        let s = format!("<stream:stream id='1'><message><body>{big}</body></message>");
        let out = parse(&s, 1024).await;
        assert!(
            out[1].as_ref().unwrap_err().contains("larger than 1024"),
            "{:?}",
            out[1]
        );
        // Unbounded text without a closing tag is cut off too.
        let s = format!("<stream:stream id='1'><message><body>{}", "y".repeat(100_000));
        let out = parse(&s, 1024).await;
        assert!(
            out[1].as_ref().unwrap_err().contains("larger than 1024"),
            "{:?}",
            out[1]
        );
    }

    #[tokio::test]
    async fn doctype_and_bad_xml_are_errors() {
        let out = parse("<stream:stream id='1'><a></b>", 1024).await;
        assert!(out[1].is_err());
        let out = parse("<stream:stream id='1'><a>&ent;</a>", 1024).await;
        assert!(out[1].as_ref().unwrap_err().contains("unknown entity"));
    }

    const HEADER: &str =
        "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>";

    /// `<iq>` with `depth - 1` nested `<a>` inside, the innermost holding `leaf`.
    fn deep_iq(depth: usize, leaf: &str) -> String {
        let mut s = String::with_capacity(depth * 8 + 64);
        s.push_str(HEADER);
        s.push_str("<iq type='get'>");
        s.push_str(&"<a>".repeat(depth - 1));
        s.push_str(leaf);
        s.push_str(&"</a>".repeat(depth - 1));
        s.push_str("</iq>");
        s
    }

    /// Run `f` on a thread with a 256 KiB stack.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .expect("no stack overflow")
    }

    async fn read_one(doc: &str, limits: Limits) -> Result<Element, ReadError> {
        let mut r = StreamReader::new(doc.as_bytes(), limits);
        r.header().await?;
        r.next().await
    }

    #[tokio::test]
    async fn depth_limit_counts_the_stanza_as_one() {
        let lim = Limits {
            max_stanza: 65536,
            max_depth: 16,
        };
        let iq = read_one(&deep_iq(16, "x"), lim).await.unwrap();
        assert_eq!(iq.name, "iq");
        for leaf in ["x", "<b/>"] {
            match read_one(&deep_iq(17, leaf), lim).await {
                Err(e @ ReadError::TooDeep(16)) => {
                    assert_eq!(e.limit(), Some(("max_stanza_depth", 16)));
                    assert_eq!(e.to_string(), "stanza nested deeper than 16 elements");
                }
                other => panic!("{other:?}"),
            }
        }
        // An empty element one level too deep is refused too.
        match read_one(&deep_iq(16, "<b/>"), lim).await {
            Err(ReadError::TooDeep(16)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn names_that_are_not_xml_names_are_errors() {
        // The fuzzer's inputs (xmpp_stanza): `<\t/>` read as an element
        // named "", which wrote back as `</>`; quotes in an attribute name,
        // which wrote back as a value that never closes.
        for s in [
            "<stream:stream id='1'><\t/>",
            "<stream:stream id='1'><iq>< ></ ></iq>",
            "<stream:stream id='1'><iq type=\"'\"\"\"2\"=\"'\" \"\"get'@hie='x'/>",
            "<stream:stream id='1'><iq 1a='x'/>",
        ] {
            let out = parse(s, 1024).await;
            assert!(
                out[1].as_ref().is_err_and(|e| e.contains("invalid XML name")),
                "{s}: {:?}",
                out[1]
            );
        }
        let out = parse("<stream:stream id='1'><é:x-1.y_z xmlns:é='urn:e' a·b='1'/>", 1024).await;
        assert_eq!(out[1].as_ref().map(|e| e.ns()), Ok(Some("urn:e")));
    }

    #[test]
    fn a_million_deep_stanza_is_refused_quickly_on_a_small_stack() {
        let doc = deep_iq(1_000_000, "x");
        let started = std::time::Instant::now();
        let got = on_small_stack(move || {
            let lim = Limits {
                max_stanza: doc.len() + 1,
                max_depth: 64,
            };
            futures::executor::block_on(read_one(&doc, lim))
        });
        assert!(matches!(got, Err(ReadError::TooDeep(64))), "{got:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_tree_read_200000_deep_is_cloned_written_and_dropped_on_a_small_stack() {
        const DEPTH: usize = 200_000;
        let doc = deep_iq(DEPTH, "leaf");
        let stanza_len = doc.len() - HEADER.len();
        let written = on_small_stack(move || {
            let lim = Limits {
                max_stanza: doc.len(),
                max_depth: usize::MAX,
            };
            let iq = futures::executor::block_on(read_one(&doc, lim)).expect("read without a depth limit");
            let copy = iq.clone();
            assert!(copy == iq);
            let mut innermost = &copy;
            let mut depth = 1;
            while let Some(e) = innermost.elements().next() {
                (innermost, depth) = (e, depth + 1);
            }
            assert_eq!((depth, innermost.text_content().as_str()), (DEPTH, "leaf"));
            assert_eq!(innermost.ns(), Some("jabber:component:accept"));
            let written = copy.to_bytes().len();
            drop(iq);
            drop(copy);
            written
        });
        // The writer spells `type="get"` where the input had `type='get'`.
        assert_eq!(written, stanza_len);
    }

    #[tokio::test]
    async fn redeclared_prefixes_shadow_and_come_back() {
        let doc = format!(
            "{HEADER}<iq><a:q xmlns:a='urn:1'><a:r xmlns:a='urn:2'><a:t/></a:r><a:s/></a:q><q2 xmlns='urn:3'/></iq>"
        );
        let lim = limits(4096);
        let iq = read_one(&doc, lim).await.unwrap();
        let q = iq.find("q", Some("urn:1")).unwrap();
        let r = q.find("r", None).unwrap();
        assert_eq!(
            (r.ns(), r.find("t", None).unwrap().ns()),
            (Some("urn:2"), Some("urn:2"))
        );
        assert_eq!(q.find("s", None).unwrap().ns(), Some("urn:1"));
        assert_eq!(iq.find("q2", None).unwrap().ns(), Some("urn:3"));
        // After the stanza only the header's declarations are in scope.
        let doc = format!("{HEADER}<iq><a:q xmlns:a='urn:1'/></iq><a:q/>");
        let mut r = StreamReader::new(doc.as_bytes(), lim);
        r.header().await.unwrap();
        r.next().await.unwrap();
        assert!(matches!(r.next().await, Err(ReadError::Xml(e)) if e.contains("undeclared")));
    }

    #[tokio::test]
    async fn many_declarations_resolve_in_linear_time() {
        // 30,000 prefixes declared on the stanza, then 30,000 children in
        // the default namespace: a scope searched from the innermost
        // declaration would compare 900 million prefixes.
        const N: usize = 30_000;
        let mut doc = format!("{HEADER}<iq");
        for i in 0..N {
            doc.push_str(&format!(" xmlns:p{i}='u'"));
        }
        doc.push('>');
        doc.push_str(&"<a/>".repeat(N));
        doc.push_str("</iq>");
        let started = std::time::Instant::now();
        let iq = read_one(&doc, limits(doc.len())).await.unwrap();
        assert_eq!(iq.elements().count(), N);
        assert!(iq.elements().all(|a| a.ns() == Some("jabber:component:accept")));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
