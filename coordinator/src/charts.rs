//! The job charts, listed once (`assets/charts.json`): the dashboard fetches the list from
//! `/assets/charts.json` and `grlo ctl job plot` reads it from here, so a chart or a metric
//! added to the list appears in both.

use std::sync::OnceLock;

use serde::Deserialize;

/// The list as written, served to the dashboard as is.
pub const CHARTS_JSON: &str = include_str!("../assets/charts.json");

/// Every chart, in the order drawn, and the latest step's summary keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartList {
    /// What the file is, for a person reading it.
    pub about: String,
    pub charts: Vec<ChartSpec>,
    pub summary: Vec<String>,
}

/// One chart.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartSpec {
    /// The dashboard's canvas is `chart-<id>`.
    pub id: String,
    pub title: String,
    pub kind: ChartKind,
    /// The y axis includes 0.
    #[serde(default)]
    pub zero: bool,
    /// `series`: the metrics drawn.
    #[serde(default)]
    pub series: Vec<SeriesSpec>,
    /// `prefix`: every metric whose key starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `prefix`: the colours of its lines, in order (as many lines as colours at most);
    /// `budget`: what is left, then the limit.
    #[serde(default)]
    pub colors: Vec<String>,
    /// What an empty chart says.
    #[serde(default)]
    pub empty: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChartKind {
    Series,
    Prefix,
    Budget,
}

/// One line of a `series` chart.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSpec {
    /// Its `metrics.jsonl` key.
    pub key: String,
    /// `#rrggbb`.
    pub color: String,
    /// A band of mean ± this key around the line.
    #[serde(default)]
    pub band_std: Option<String>,
    /// Drawn only when some step has it.
    #[serde(default)]
    pub optional: bool,
}

/// The parsed list (checked by this module's tests, so it cannot fail at run time).
pub fn chart_list() -> &'static ChartList {
    static LIST: OnceLock<ChartList> = OnceLock::new();
    LIST.get_or_init(|| serde_json::from_str(CHARTS_JSON).expect("assets/charts.json parses"))
}

/// `#rrggbb` as its three bytes.
pub fn rgb(color: &str) -> Option<[u8; 3]> {
    let hex = color.strip_prefix('#').filter(|h| h.len() == 6)?;
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_every_chart_can_be_drawn() {
        let list = chart_list();
        assert!(!list.charts.is_empty() && !list.summary.is_empty());
        let mut ids: Vec<&str> = list.charts.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), list.charts.len(), "chart ids are unique");
        for chart in &list.charts {
            let colors: Vec<&String> = chart
                .series
                .iter()
                .map(|s| &s.color)
                .chain(&chart.colors)
                .collect();
            for color in colors {
                assert!(rgb(color).is_some(), "{}: colour {color}", chart.id);
            }
            match chart.kind {
                ChartKind::Series => assert!(!chart.series.is_empty(), "{}", chart.id),
                ChartKind::Prefix => {
                    assert!(
                        chart.prefix.is_some() && !chart.colors.is_empty(),
                        "{}",
                        chart.id
                    )
                }
                ChartKind::Budget => assert_eq!(chart.colors.len(), 2, "{}", chart.id),
            }
        }
    }

    #[test]
    fn colours_read_as_bytes() {
        assert_eq!(rgb("#2563eb"), Some([37, 99, 235]));
        assert_eq!(rgb("2563eb"), None);
        assert_eq!(rgb("#25"), None);
    }
}
