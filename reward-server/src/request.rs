//! Checking a `ScoreRequest` before any work is done for it, and turning its items into rule
//! scores and reward-model conversations.

use grlo_learner::reward::code;
use grlo_learner::reward::rule::rule_reward;
use grlo_model::ChatMessage;
use grlo_proto::status::Failure;
use grlo_proto::v1::{ScoreItem, ScoreRequest};
use tonic::Status;

/// Roles a prompt message may have.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Which source scores an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// The reward model.
    Model,
    /// A rule verifier against the item's ground truth.
    Rule,
    /// A rule item of a code source: its program runs against the tests in its ground truth.
    Code,
}

/// The bounds a request is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_request_items: usize,
    pub max_item_bytes: usize,
}

/// The style of each item, or INVALID_ARGUMENT naming the first item and field that is wrong.
pub(crate) fn validate(request: &ScoreRequest, limits: Limits) -> Result<Vec<Style>, Status> {
    let invalid = |message: String| Failure::InvalidArgument.status(message);
    if request.items.is_empty() {
        return Err(invalid("the request has no items".into()));
    }
    if request.items.len() > limits.max_request_items {
        return Err(invalid(format!(
            "the request has {} items, more than the {} this server takes in one request (max_request_items): split it",
            request.items.len(),
            limits.max_request_items
        )));
    }
    request
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| validate_item(i, item, limits).map_err(invalid))
        .collect()
}

fn validate_item(i: usize, item: &ScoreItem, limits: Limits) -> Result<Style, String> {
    let bytes = item_bytes(item);
    if bytes > limits.max_item_bytes {
        return Err(format!(
            "items[{i}] is {bytes} bytes of text, more than the {} this server takes (max_item_bytes)",
            limits.max_item_bytes
        ));
    }
    let style = match item.style.as_str() {
        "model" => Style::Model,
        "rule" => Style::Rule,
        other => {
            return Err(format!(
                "items[{i}].style is \"{}\": use \"model\" or \"rule\"",
                other.escape_debug()
            ));
        }
    };
    if style == Style::Rule && item.ground_truth.is_empty() {
        return Err(format!(
            "items[{i}].ground_truth is empty: style \"rule\" checks the response against it"
        ));
    }
    let ability = Some(item.ability.as_str()).filter(|a| !a.is_empty());
    if style == Style::Rule && code::is_code(&item.data_source, ability) {
        code::parse_tests(&item.ground_truth)
            .map_err(|e| format!("items[{i}].ground_truth: the tests of a code item: {e}"))?;
        return Ok(Style::Code);
    }
    if style == Style::Model && item.prompt.is_empty() {
        return Err(format!(
            "items[{i}].prompt is empty: style \"model\" scores the prompt's messages with the response"
        ));
    }
    for (j, message) in item.prompt.iter().enumerate() {
        if !ROLES.contains(&message.role.as_str()) {
            return Err(format!(
                "items[{i}].prompt[{j}].role is \"{}\": use system, user, assistant or tool",
                message.role.escape_debug()
            ));
        }
    }
    Ok(style)
}

/// Bytes of text in an item.
fn item_bytes(item: &ScoreItem) -> usize {
    let prompt: usize = item
        .prompt
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    prompt
        + item.response.len()
        + item.ground_truth.len()
        + item.data_source.len()
        + item.ability.len()
}

/// The verifier's score of a rule item.
pub(crate) fn rule_score(item: &ScoreItem) -> f32 {
    let ability = Some(item.ability.as_str()).filter(|a| !a.is_empty());
    rule_reward(
        &item.data_source,
        ability,
        &item.response,
        &item.ground_truth,
    )
}

/// The conversation a reward model scores: the prompt's messages, then the response as the
/// assistant's message.
pub(crate) fn conversation(item: ScoreItem) -> Vec<ChatMessage> {
    let mut messages: Vec<ChatMessage> = item
        .prompt
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect();
    messages.push(ChatMessage::assistant(item.response));
    messages
}

#[cfg(test)]
mod tests {
    use grlo_proto::v1::ChatMessage as ProtoMessage;
    use tonic::Code;

    use super::*;

    const LIMITS: Limits = Limits {
        max_request_items: 3,
        max_item_bytes: 100,
    };

    fn model_item() -> ScoreItem {
        ScoreItem {
            prompt: vec![ProtoMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            response: "hello".into(),
            style: "model".into(),
            ..Default::default()
        }
    }

    fn rule_item(truth: &str) -> ScoreItem {
        ScoreItem {
            response: "\\boxed{4}".into(),
            style: "rule".into(),
            ground_truth: truth.into(),
            data_source: "openai/gsm8k".into(),
            ..Default::default()
        }
    }

    fn error(items: Vec<ScoreItem>) -> String {
        let request = ScoreRequest {
            job_id: String::new(),
            items,
        };
        let status = validate(&request, LIMITS).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        status.message().to_owned()
    }

    #[test]
    fn accepts_model_and_rule_items() {
        let request = ScoreRequest {
            job_id: String::new(),
            items: vec![model_item(), rule_item("4")],
        };
        assert_eq!(
            validate(&request, LIMITS).unwrap(),
            vec![Style::Model, Style::Rule]
        );
    }

    #[test]
    fn names_the_item_and_field_that_is_wrong() {
        assert_eq!(error(vec![]), "the request has no items");
        assert!(error(vec![model_item(); 4]).contains("has 4 items, more than the 3"));
        let mut typo = model_item();
        typo.style = "mdoel".into();
        assert_eq!(
            error(vec![model_item(), typo]),
            "items[1].style is \"mdoel\": use \"model\" or \"rule\""
        );
        assert!(
            error(vec![model_item(), rule_item("")]).starts_with("items[1].ground_truth is empty")
        );
        let mut empty = model_item();
        empty.style.clear();
        assert!(error(vec![empty]).starts_with("items[0].style is \"\""));
        let mut big = model_item();
        big.response = "x".repeat(200);
        assert!(error(vec![big]).starts_with("items[0] is 206 bytes of text, more than the 100"));
        let mut role = model_item();
        role.prompt[0].role = "usr".into();
        assert!(
            error(vec![rule_item("4"), role]).starts_with("items[1].prompt[0].role is \"usr\"")
        );
        let mut bare = model_item();
        bare.prompt.clear();
        assert!(error(vec![bare]).starts_with("items[0].prompt is empty"));
    }

    #[test]
    fn rule_items_use_the_verifiers() {
        assert_eq!(rule_score(&rule_item("4")), 1.0);
        assert_eq!(rule_score(&rule_item("5")), 0.0);
        let mut exact = rule_item("Paris");
        exact.data_source = "trivia".into();
        exact.response = " Paris ".into();
        assert_eq!(rule_score(&exact), 1.0);
        exact.ability = "math".into();
        assert_eq!(rule_score(&exact), 0.0, "ability math needs a box");
    }

    #[test]
    fn the_response_ends_the_conversation() {
        let messages = conversation(model_item());
        assert_eq!(
            messages,
            vec![ChatMessage::user("hi"), ChatMessage::assistant("hello")]
        );
    }
}
