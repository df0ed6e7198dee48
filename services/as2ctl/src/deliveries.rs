//! `as2ctl mdn ...`: asynchronous MDN deliveries from the MDN service.

use std::fmt::Write as _;

use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::mdn::v1::{
    DeliveryState, DeliveryStatus, GetDeliveryStatusRequest, ListDeliveriesRequest,
};
use as2_rpc::tonic::transport::Channel;
use as2_rpc::tonic::{Code, Status};
use serde::Serialize;

use crate::cli::{MdnCommand, MdnListArgs};
use crate::commands::CtlError;
use crate::output::rfc3339;

/// Largest page asked for.
const PAGE_SIZE: usize = 500;

/// A delivery as as2ctl prints it in JSON: states as the `--state` option names
/// them, times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    delivery_id: String,
    state: &'static str,
    partnership_id: String,
    original_message_id: String,
    delivery_url: String,
    attempts: u32,
    last_http_status: u32,
    last_error: String,
    enqueued_at: Option<String>,
    last_attempt_at: Option<String>,
    next_attempt_at: Option<String>,
    delivered_at: Option<String>,
}

impl From<&DeliveryStatus> for DeliveryView {
    fn from(status: &DeliveryStatus) -> Self {
        Self {
            delivery_id: status.delivery_id.clone(),
            state: state_name(status.state),
            partnership_id: status.partnership_id.clone(),
            original_message_id: status.original_message_id.clone(),
            delivery_url: status.delivery_url.clone(),
            attempts: status.attempts,
            last_http_status: status.last_http_status,
            last_error: status.last_error.clone(),
            enqueued_at: status.enqueued_at.as_ref().map(rfc3339),
            last_attempt_at: status.last_attempt_at.as_ref().map(rfc3339),
            next_attempt_at: status.next_attempt_at.as_ref().map(rfc3339),
            delivered_at: status.delivered_at.as_ref().map(rfc3339),
        }
    }
}

fn state_name(state: i32) -> &'static str {
    match DeliveryState::try_from(state) {
        Ok(DeliveryState::Queued) => "queued",
        Ok(DeliveryState::InFlight) => "in-flight",
        Ok(DeliveryState::RetryScheduled) => "retry-scheduled",
        Ok(DeliveryState::Delivered) => "delivered",
        Ok(DeliveryState::Failed) => "failed",
        Ok(DeliveryState::Unspecified) | Err(_) => "unknown",
    }
}

/// Runs an `mdn` command and returns what to print.
pub async fn execute(
    mut client: MdnDeliveryServiceClient<Channel>,
    command: MdnCommand,
    json: bool,
) -> Result<String, CtlError> {
    match command {
        MdnCommand::Status(args) => {
            let status = client
                .get_delivery_status(GetDeliveryStatusRequest {
                    delivery_id: args.delivery_id,
                })
                .await
                .map_err(|status| refused(&status))?
                .into_inner()
                .status
                .unwrap_or_default();
            let view = DeliveryView::from(&status);
            if json {
                return Ok(serde_json::to_string_pretty(&view)? + "\n");
            }
            Ok(render_detail(&view))
        }
        MdnCommand::List(args) => {
            let deliveries = list(&mut client, &args).await?;
            let views: Vec<DeliveryView> = deliveries.iter().map(DeliveryView::from).collect();
            if json {
                return Ok(serde_json::to_string_pretty(&views)? + "\n");
            }
            Ok(render_table(&views))
        }
    }
}

async fn list(
    client: &mut MdnDeliveryServiceClient<Channel>,
    args: &MdnListArgs,
) -> Result<Vec<DeliveryStatus>, CtlError> {
    let mut deliveries = Vec::new();
    let mut page_token = String::new();
    while deliveries.len() < args.limit {
        let page = client
            .list_deliveries(ListDeliveriesRequest {
                partnership_id: args.partnership.clone().unwrap_or_default(),
                state: args
                    .state
                    .map_or(DeliveryState::Unspecified, DeliveryState::from)
                    as i32,
                page_size: u32::try_from((args.limit - deliveries.len()).min(PAGE_SIZE))
                    .unwrap_or(1),
                page_token,
            })
            .await
            .map_err(|status| refused(&status))?
            .into_inner();
        deliveries.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    deliveries.truncate(args.limit);
    Ok(deliveries)
}

fn refused(status: &Status) -> CtlError {
    let message = status.message();
    CtlError::Refused(match status.code() {
        Code::InvalidArgument => format!("invalid request: {message}"),
        Code::NotFound => format!("not found: {message}"),
        Code::Unavailable => format!("mdn service unavailable: {message}"),
        Code::DeadlineExceeded => format!("mdn service did not answer in time: {message}"),
        code => format!("mdn service error ({code:?}): {message}"),
    })
}

/// The detail view of one delivery, for people.
pub fn render_detail(view: &DeliveryView) -> String {
    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "{label:<22}{value}");
    };
    line("delivery id:", &view.delivery_id);
    line("state:", view.state);
    line("partnership:", &view.partnership_id);
    line("original message id:", &view.original_message_id);
    line("delivery url:", &view.delivery_url);
    line("attempts:", &view.attempts.to_string());
    if view.last_http_status != 0 {
        line("last http status:", &view.last_http_status.to_string());
    }
    if !view.last_error.is_empty() {
        line("last error:", &view.last_error);
    }
    for (label, value) in [
        ("enqueued at:", &view.enqueued_at),
        ("last attempt at:", &view.last_attempt_at),
        ("next attempt at:", &view.next_attempt_at),
        ("delivered at:", &view.delivered_at),
    ] {
        if let Some(value) = value {
            line(label, value);
        }
    }
    text
}

/// One line per delivery, for people.
pub fn render_table(views: &[DeliveryView]) -> String {
    if views.is_empty() {
        return "no deliveries\n".to_owned();
    }
    let headings = [
        "DELIVERY ID",
        "STATE",
        "ATTEMPTS",
        "PARTNERSHIP",
        "ENQUEUED AT",
        "MESSAGE ID",
    ];
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|view| {
            [
                view.delivery_id.clone(),
                view.state.to_owned(),
                view.attempts.to_string(),
                view.partnership_id.clone(),
                view.enqueued_at.clone().unwrap_or_default(),
                view.original_message_id.clone(),
            ]
        })
        .collect();
    let mut widths = headings.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut write_row = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if index == last {
                let _ = writeln!(text, "{cell}");
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
    };
    write_row(&headings);
    for row in &rows {
        write_row(&row.each_ref().map(String::as_str));
    }
    text
}

#[cfg(test)]
mod tests {
    use as2_rpc::prost_types::Timestamp;

    use super::*;

    fn status() -> DeliveryStatus {
        DeliveryStatus {
            delivery_id: "0123456789abcdef0123456789abcdef".to_owned(),
            original_message_id: "<m@partner>".to_owned(),
            partnership_id: "p1".to_owned(),
            delivery_url: "https://partner/mdn".to_owned(),
            state: DeliveryState::RetryScheduled as i32,
            attempts: 2,
            last_http_status: 503,
            last_error: "the partner answered 503 Service Unavailable".to_owned(),
            enqueued_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..DeliveryStatus::default()
        }
    }

    #[test]
    fn json_uses_option_names_and_rfc3339() {
        let json = serde_json::to_value(DeliveryView::from(&status())).unwrap();
        assert_eq!(json["state"], "retry-scheduled");
        assert_eq!(json["enqueued_at"], "2023-11-14T22:13:20Z");
        assert!(json["delivered_at"].is_null());
    }

    #[test]
    fn the_table_lines_up() {
        let table = render_table(&[DeliveryView::from(&status())]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("STATE"), lines[1].find("retry-scheduled"));
        assert!(
            render_detail(&DeliveryView::from(&status()))
                .contains(&format!("{:<22}503", "last http status:"))
        );
    }
}
