//! The element tree of a stanza, and its serialisation with quick-xml's
//! writer (which escapes every name, attribute and text).
//!
//! Children are owned, so a tree is as deep as its input. Every walk over
//! a whole tree - clone, equality, `Debug`, serialisation and drop - is a
//! loop over an explicit stack on the heap, never a recursion: a tree's
//! depth costs memory, not call stack. The stream reader also refuses
//! stanzas nested deeper than `max_stanza_depth`, but trees built in code
//! have no such limit and must not need one.

use std::fmt;
use std::sync::Arc;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

/// An element: its (prefixed) name, attributes in document order, and
/// children; read from a stream, also the namespace its name resolves to.
#[derive(Default)]
pub struct Element {
    /// The name as written, prefix included (`stream:error`).
    pub name: String,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements and text, in document order.
    pub children: Vec<Node>,
    /// The resolved namespace (default or prefixed declarations, in this
    /// element or inherited), shared with the reader's declaration; `None`
    /// for elements built here.
    pub namespace: Option<Arc<str>>,
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
            attrs: Vec::new(),
            children: Vec::new(),
            namespace: None,
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

    /// Take the first child element out of this one (the payload of an iq).
    pub fn take_first_element(&mut self) -> Option<Element> {
        let i = self.children.iter().position(|n| matches!(n, Node::Element(_)))?;
        match self.children.remove(i) {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }
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

    /// Serialize (escaping done by quick-xml); iterative, whatever the depth.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut w = quick_xml::Writer::new(out);
        // Open elements, each with the index of its next child to write.
        let mut open: Vec<(&Element, usize)> = Vec::new();
        if write_start(&mut w, self) {
            open.push((self, 0));
        }
        while let Some(top) = open.last_mut() {
            let e: &Element = top.0;
            let next = e.children.get(top.1);
            top.1 += 1;
            match next {
                Some(Node::Text(t)) => {
                    let _ = w.write_event(Event::Text(BytesText::new(t)));
                }
                Some(Node::Element(c)) => {
                    if write_start(&mut w, c) {
                        open.push((c, 0));
                    }
                }
                None => {
                    let _ = w.write_event(Event::End(BytesEnd::new(e.name.as_str())));
                    open.pop();
                }
            }
        }
    }

    /// The element serialized (see [`Element::write_to`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }

    /// About how many bytes the tree takes in memory: every node's slot,
    /// name, attributes and text (not allocator slack); counted without
    /// recursion.
    pub fn footprint(&self) -> usize {
        let node = std::mem::size_of::<Node>();
        let mut total = node;
        let mut pending = vec![self];
        while let Some(e) = pending.pop() {
            total += e.name.len() + e.attrs.iter().map(|(k, v)| 48 + k.len() + v.len()).sum::<usize>();
            for n in &e.children {
                total += node;
                match n {
                    Node::Element(c) => pending.push(c),
                    Node::Text(t) => total += t.len(),
                }
            }
        }
        total
    }

    /// This element without its children (room reserved for them).
    fn shallow_clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            attrs: self.attrs.clone(),
            children: Vec::with_capacity(self.children.len()),
            namespace: self.namespace.clone(),
        }
    }
}

/// Write `e`'s start tag, or its empty-element tag when it has no
/// children; `true` when children (and an end tag) are to follow.
fn write_start(w: &mut quick_xml::Writer<&mut Vec<u8>>, e: &Element) -> bool {
    let mut start = BytesStart::new(e.name.as_str());
    for (k, v) in &e.attrs {
        start.push_attribute((k.as_str(), v.as_str()));
    }
    if e.children.is_empty() {
        let _ = w.write_event(Event::Empty(start));
        false
    } else {
        let _ = w.write_event(Event::Start(start));
        true
    }
}

impl Clone for Element {
    /// A deep copy, built with an explicit stack.
    fn clone(&self) -> Self {
        // Ancestors of `current`, each with its next child index and its copy so far.
        let mut stack: Vec<(&Element, usize, Element)> = Vec::new();
        let mut current = (self, 0, self.shallow_clone());
        loop {
            let src: &Element = current.0;
            match src.children.get(current.1) {
                Some(Node::Text(t)) => {
                    current.2.children.push(Node::Text(t.clone()));
                    current.1 += 1;
                }
                Some(Node::Element(c)) => {
                    current.1 += 1;
                    let parent = std::mem::replace(&mut current, (c, 0, c.shallow_clone()));
                    stack.push(parent);
                }
                None => {
                    let (_, _, done) = current;
                    match stack.pop() {
                        Some(mut parent) => {
                            parent.2.children.push(Node::Element(done));
                            current = parent;
                        }
                        None => return done,
                    }
                }
            }
        }
    }
}

impl PartialEq for Element {
    /// Same name, attributes, namespace and children, compared with an
    /// explicit stack.
    fn eq(&self, other: &Self) -> bool {
        let mut pairs = vec![(self, other)];
        while let Some((a, b)) = pairs.pop() {
            if a.name != b.name
                || a.attrs != b.attrs
                || a.namespace != b.namespace
                || a.children.len() != b.children.len()
            {
                return false;
            }
            for pair in a.children.iter().zip(&b.children) {
                match pair {
                    (Node::Text(x), Node::Text(y)) if x == y => {}
                    (Node::Element(x), Node::Element(y)) => pairs.push((x, y)),
                    _ => return false,
                }
            }
        }
        true
    }
}

impl Eq for Element {}

impl fmt::Debug for Element {
    /// The resolved namespace and the serialized XML (quoted, so peer
    /// data cannot forge log lines).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Element")
            .field("namespace", &self.namespace)
            .field("xml", &String::from_utf8_lossy(&self.to_bytes()))
            .finish()
    }
}

impl Drop for Element {
    /// Detach descendants onto a heap stack and drop them one by one,
    /// each without element children left: no recursion per level.
    fn drop(&mut self) {
        let mut detached = Vec::new();
        detach_elements(&mut self.children, &mut detached);
        while let Some(mut e) = detached.pop() {
            detach_elements(&mut e.children, &mut detached);
        }
    }
}

/// Move the element children out of `children` onto `into`.
fn detach_elements(children: &mut Vec<Node>, into: &mut Vec<Element>) {
    if children.iter().any(|n| matches!(n, Node::Element(_))) {
        into.extend(children.drain(..).filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn clone_equality_and_serialisation_keep_structure() {
        let e = Element::new("iq")
            .attr("type", "set")
            .text("a")
            .child(Element::new("x").child(Element::new("y").text("1")).text("b"))
            .child(Element::new("z"));
        let c = e.clone();
        assert_eq!(c, e);
        assert_eq!(
            String::from_utf8(c.to_bytes()).unwrap(),
            r#"<iq type="set">a<x><y>1</y>b</x><z/></iq>"#
        );
        let other = Element::new("iq")
            .attr("type", "set")
            .text("a")
            .child(Element::new("x").child(Element::new("y").text("2")).text("b"))
            .child(Element::new("z"));
        assert_ne!(other, e, "a difference deep inside counts");
        assert!(format!("{e:?}").contains(r#"<y>1</y>"#), "{e:?}");
    }

    /// A chain of `depth` nested `<a>`, built bottom-up.
    fn chain(depth: usize) -> Element {
        let mut e = Element::new("a").text("leaf");
        for _ in 1..depth {
            e = Element::new("a").child(e);
        }
        e
    }

    #[test]
    fn a_tree_200000_deep_is_cloned_written_and_dropped_on_a_small_stack() {
        const DEPTH: usize = 200_000;
        let worker = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let e = chain(DEPTH);
                let copy = e.clone();
                assert!(copy == e);
                let xml = copy.to_bytes();
                let expected = format!("{}leaf{}", "<a>".repeat(DEPTH), "</a>".repeat(DEPTH));
                assert!(xml == expected.as_bytes(), "serialised as nested <a>");
                let debug = format!("{copy:?}");
                assert!(debug.len() > xml.len());
                drop(e);
                drop(copy);
                // Wide as well as deep.
                let mut wide = Element::new("w");
                for _ in 0..DEPTH {
                    wide = wide.child(Element::new("b"));
                }
                drop(wide.clone());
                xml.len()
            })
            .unwrap();
        assert_eq!(worker.join().expect("no stack overflow"), DEPTH * 7 + 4);
    }

    #[test]
    fn footprint_counts_every_node() {
        let node = std::mem::size_of::<Node>();
        let leaf = Element::new("a");
        assert_eq!(leaf.footprint(), node + 1);
        let e = Element::new("iq").attr("id", "xy").text("hello").child(leaf);
        assert_eq!(e.footprint(), node + 2 + (48 + 4) + (node + 5) + (node + 1));
        assert!(chain(10_000).footprint() > 10_000 * node);
    }

    #[test]
    fn take_first_element_skips_text() {
        let mut iq = Element::new("iq")
            .text(" ")
            .child(Element::new("q"))
            .child(Element::new("r"));
        assert_eq!(iq.take_first_element().map(|e| e.name.clone()), Some("q".to_owned()));
        assert_eq!(iq.elements().next().map(|e| e.name.as_str()), Some("r"));
        assert_eq!(Element::new("iq").text("t").take_first_element(), None);
    }
}
