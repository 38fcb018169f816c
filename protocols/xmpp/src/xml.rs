//! A small element tree over quick-xml: the XMPP stream is read stanza by
//! stanza (each a tree of bounded size) and stanzas are written with
//! quick-xml's writer, which escapes every name, attribute and text.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quick_xml::events::{BytesEnd, BytesRef, BytesStart, BytesText, Event};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// An element: its (prefixed) name, attributes in document order, and
/// children; read from a stream, also the namespace its name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// The name as written, prefix included (`stream:error`).
    pub name: String,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements and text, in document order.
    pub children: Vec<Node>,
    /// The resolved namespace (default or prefixed declarations, in this
    /// element or inherited); `None` for elements built here.
    pub namespace: Option<String>,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// An element named `name` (prefix included), without attributes or children.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Builder: add an attribute.
    pub fn attr(mut self, k: &str, v: &str) -> Self {
        self.attrs.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Builder: add a child element.
    pub fn child(mut self, c: Element) -> Self {
        self.children.push(Node::Element(c));
        self
    }

    /// Builder: add text.
    pub fn text(mut self, t: &str) -> Self {
        self.children.push(Node::Text(t.to_owned()));
        self
    }

    /// The value of attribute `k` (as written, e.g. `xmlns:stream`).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    /// The local part of the name (`stream:error` → `error`).
    pub fn local(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// The element's namespace: resolved when it was read (so
    /// `<ps:pubsub xmlns:ps='…'>` and inherited defaults count), else the
    /// `xmlns` it was built with.
    pub fn ns(&self) -> Option<&str> {
        self.namespace.as_deref().or_else(|| self.get("xmlns"))
    }

    /// The child elements (not text), in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element named `local` (and in namespace `ns` when given).
    pub fn find(&self, local: &str, ns: Option<&str>) -> Option<&Element> {
        self.elements()
            .find(|e| e.local() == local && (ns.is_none() || e.ns() == ns))
    }

    /// All text directly inside.
    pub fn text_content(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialize (escaping done by quick-xml).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut w = quick_xml::Writer::new(out);
        self.write(&mut w);
    }

    fn write(&self, w: &mut quick_xml::Writer<&mut Vec<u8>>) {
        let mut start = BytesStart::new(self.name.as_str());
        for (k, v) in &self.attrs {
            start.push_attribute((k.as_str(), v.as_str()));
        }
        if self.children.is_empty() {
            let _ = w.write_event(Event::Empty(start));
            return;
        }
        let _ = w.write_event(Event::Start(start));
        for c in &self.children {
            match c {
                Node::Element(e) => e.write(w),
                Node::Text(t) => {
                    let _ = w.write_event(Event::Text(BytesText::new(t)));
                }
            }
        }
        let _ = w.write_event(Event::End(BytesEnd::new(self.name.as_str())));
    }

    /// The element serialized (see [`Element::write_to`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

/// Why reading the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stanza larger than {0} bytes")]
    TooBig(usize),
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the stream")]
    Closed,
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
    max: usize,
    buf: Vec<u8>,
    /// Namespace declarations of the stream header: (prefix, uri), `""`
    /// for the default namespace.
    root: Vec<(String, String)>,
}

/// Bytes the buffered reader may read ahead past a stanza.
const READ_AHEAD: usize = 8192;

impl<R: AsyncRead + Unpin> StreamReader<R> {
    /// A reader of `inner` refusing stanzas over `max_stanza` bytes (and
    /// reading at most `max_stanza` + 8 KiB ahead of a stanza's start).
    pub fn new(inner: R, max_stanza: usize) -> Self {
        let budget = Arc::new(AtomicUsize::new(max_stanza + READ_AHEAD));
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
            max: max_stanza,
            buf: Vec::with_capacity(4096),
            root: Vec::new(),
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
                    let mut scope = Vec::new();
                    resolve(&mut header, &mut scope)?;
                    self.root = scope;
                    return Ok(header);
                }
                Event::Eof => return Err(ReadError::Closed),
                other => return Err(ReadError::Xml(format!("expected a stream header, got {other:?}"))),
            }
        }
    }

    /// The next stanza; `Err(Closed)` at the end of the stream (its end
    /// tag or EOF), `Err(TooBig)` once it passes `max_stanza` bytes.
    pub async fn next(&mut self) -> Result<Element, ReadError> {
        let start = self.reader.buffer_position();
        let mut partial = Partial::new(self.root.clone());
        loop {
            self.buf.clear();
            let ev = self
                .reader
                .read_event_into_async(&mut self.buf)
                .await
                .map_err(|e| match Self::xml_err(e) {
                    ReadError::TooBig(_) => ReadError::TooBig(self.max),
                    other => other,
                })?;
            if self.reader.buffer_position() - start > self.max as u64 {
                return Err(ReadError::TooBig(self.max));
            }
            if let Some(stanza) = partial.feed(ev)? {
                self.budget.store(self.max + READ_AHEAD, Ordering::Relaxed);
                return Ok(stanza);
            }
        }
    }
}

/// A stanza being read: its open elements, and the namespace declarations
/// in scope.
struct Partial {
    /// Open elements, the stanza first.
    stack: Vec<Element>,
    /// Declarations in scope: (prefix, uri), the stream header's first.
    scope: Vec<(String, String)>,
    /// How many declarations each open element added.
    added: Vec<usize>,
}

impl Partial {
    fn new(root: Vec<(String, String)>) -> Self {
        Self {
            stack: Vec::new(),
            scope: root,
            added: Vec::new(),
        }
    }

    /// Take one event; the stanza once its end is read.
    fn feed(&mut self, ev: Event<'_>) -> Result<Option<Element>, ReadError> {
        match ev {
            Event::Start(s) => {
                let mut e = start_element(&s)?;
                self.added.push(resolve(&mut e, &mut self.scope)?);
                self.stack.push(e);
                Ok(None)
            }
            Event::Empty(s) => {
                let mut e = start_element(&s)?;
                let n = resolve(&mut e, &mut self.scope)?;
                self.scope.truncate(self.scope.len() - n);
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

    /// An end tag: close the innermost element; `Closed` when none is open
    /// (`</stream:stream>`).
    fn close(&mut self) -> Result<Option<Element>, ReadError> {
        let e = self.stack.pop().ok_or(ReadError::Closed)?;
        let n = self.added.pop().unwrap_or(0);
        self.scope.truncate(self.scope.len().saturating_sub(n));
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
fn resolve(e: &mut Element, scope: &mut Vec<(String, String)>) -> Result<usize, ReadError> {
    let mut n = 0;
    for (k, v) in &e.attrs {
        let prefix = if k == "xmlns" {
            ""
        } else if let Some(p) = k.strip_prefix("xmlns:") {
            p
        } else {
            continue;
        };
        scope.push((prefix.to_owned(), v.clone()));
        n += 1;
    }
    let prefix = match e.name.split_once(':') {
        Some((p, _)) => p,
        None => "",
    };
    let uri = scope.iter().rev().find(|(p, _)| p == prefix).map(|(_, u)| u.clone());
    if uri.is_none() && !prefix.is_empty() && prefix != "xml" {
        return Err(ReadError::Xml(format!(
            "undeclared namespace prefix {prefix:?} on <{}>",
            e.name
        )));
    }
    e.namespace = uri.filter(|u| !u.is_empty());
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

    #[tokio::test]
    async fn namespaces_resolve_through_prefixes_and_inheritance() {
        let s = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>\
                 <iq><a:q xmlns:a='urn:a'><a:r/><s xmlns='urn:s'><t/></s><u/></a:q></iq><stream:error/>\
                 <iq><b:q/></iq>";
        let mut r = StreamReader::new(s.as_bytes(), 4096);
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
        let mut r = StreamReader::new(input.as_bytes(), max);
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
    fn writing_escapes_everything() {
        let e = Element::new("message")
            .attr("to", "a'b\"<c>&")
            .child(Element::new("body").text("</body><evil/> & more"));
        let s = String::from_utf8(e.to_bytes()).unwrap();
        assert!(!s.contains("<evil/>"), "{s}");
        assert!(s.contains("&lt;/body&gt;&lt;evil/&gt; &amp; more"), "{s}");
        assert!(s.contains("&lt;c&gt;&amp;"), "{s}");
    }
}
