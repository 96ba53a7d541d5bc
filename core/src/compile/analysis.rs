//! One analysis per SMI kind, whose result every consumer reads: the compiler's decision,
//! status conditions and Events, `weft compile`'s report and admission.
//!
//! So far: [`http_route_group`] (each match's compiled form or its problems). TrafficSplits are
//! analysed by [`crate::compile::rules::plan_split`] (decision + typed `SplitIssue`s) and the
//! single-object checks of every kind by [`crate::validate::validate_object`]; folding those in
//! here is the next step (#14).

use weft_smi::hub;

use super::rules::{analyze_match, MatchProblem};
use super::types::HttpMatch;

/// The analysis of one match of an HTTPRouteGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchAnalysis<'a> {
    /// Position in `spec.matches`.
    pub index: usize,
    pub source: &'a hub::HttpMatch,
    /// The compiled match the proxies get, or why it is left out (it matches nothing).
    pub outcome: Result<HttpMatch, Vec<MatchProblem>>,
}

/// The analysis of an HTTPRouteGroup: every match, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteGroupAnalysis<'a> {
    pub matches: Vec<MatchAnalysis<'a>>,
}

impl<'a> RouteGroupAnalysis<'a> {
    /// Every problem, with the match it belongs to, in match order.
    pub fn problems(&self) -> impl Iterator<Item = (&MatchAnalysis<'a>, &MatchProblem)> {
        self.matches.iter().flat_map(|m| {
            m.outcome
                .as_ref()
                .err()
                .into_iter()
                .flatten()
                .map(move |p| (m, p))
        })
    }
}

/// Analyses an HTTPRouteGroup on its own (it references nothing).
pub fn http_route_group(g: &hub::HttpRouteGroup) -> RouteGroupAnalysis<'_> {
    RouteGroupAnalysis {
        matches: g
            .matches
            .iter()
            .enumerate()
            .map(|(index, source)| MatchAnalysis {
                index,
                source,
                outcome: analyze_match(source),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group's analysis is the compiler's decision (what is compiled, what is left out)
    /// and the problems status and admission report, from one computation.
    #[test]
    fn route_group_analysis_is_decision_and_problems() {
        let g: hub::HttpRouteGroup = match weft_smi::from_value(&serde_json::json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
            "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"matches": [
                {"name": "odd", "methods": ["FETCH"]},
                {"name": "any", "pathRegex": "/x", "methods": ["*"]}
            ]}
        }))
        .unwrap()
        {
            hub::SmiObject::HTTPRouteGroup(g) => g,
            other => panic!("{other:?}"),
        };
        let a = http_route_group(&g);
        assert_eq!(a.matches.len(), 2);
        assert!(a.matches[0].outcome.is_err());
        let any = a.matches[1].outcome.as_ref().unwrap();
        assert!(any.methods.is_empty());
        let problems: Vec<(usize, &MatchProblem)> =
            a.problems().map(|(m, p)| (m.index, p)).collect();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, 0);
        assert!(matches!(problems[0].1, MatchProblem::UnknownMethod { .. }));
    }
}
