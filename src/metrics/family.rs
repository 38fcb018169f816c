//! Small helpers over `prometheus-client`'s encoder for families whose
//! values are read at scrape time (our counters are plain atomics, so the
//! hot path never touches a metrics map). The crate writes the exposition
//! format, the `_total` and unit suffixes, and escapes label values.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Labels of one sample: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A counter family: `name` (without `_total`) and one value per label set.
pub fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family with one value per label set.
pub fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Labels, f64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram family with one histogram per label set.
pub fn histograms<'h>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Labels, &'h Histogram)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in rows {
        h.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One unlabelled gauge.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: f64) -> std::fmt::Result {
    single(enc, name, help, unit, MetricType::Gauge, v)
}

/// One unlabelled counter or gauge.
pub fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    v: f64,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, ty)?;
    match ty {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(v).encode(m),
    }
}

/// `[("app", app)]` and more.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// Checks that the families above encode as valid text.
#[cfg(test)]
pub(crate) fn encode_with(f: impl Fn(&mut DescriptorEncoder) -> std::fmt::Result + Send + Sync + 'static) -> String {
    struct C<F>(F);
    impl<F: Fn(&mut DescriptorEncoder) -> std::fmt::Result + Send + Sync + 'static>
        prometheus_client::collector::Collector for C<F>
    {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            (self.0)(&mut enc)
        }
    }
    impl<F> std::fmt::Debug for C<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("C")
        }
    }
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(C(f)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).expect("encodes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_get_suffixes_and_escaped_labels() {
        let text = encode_with(|enc| {
            counters(enc, "x_events", "Events.", [(labels([("reason", "a \"b\"\n")]), 3)])?;
            gauges(
                enc,
                "x_age",
                "Age.",
                Some(&Unit::Seconds),
                [(labels([("app", "a")]), 1.5)],
            )
        });
        assert!(text.contains("# TYPE x_events_total counter\n"), "{text}");
        assert!(text.contains(r#"x_events_total{reason="a \"b\"\n"} 3"#), "{text}");
        assert!(text.contains("x_age_seconds{app=\"a\"} 1.5\n"), "{text}");
    }
}
