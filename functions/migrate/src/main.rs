//! Lambda entry point of `migrate-on-deploy`, the `DatabaseMigrations` custom resource of
//! template.yaml: CloudFormation invokes it on create, update and delete of the stack.

use std::time::{Duration, UNIX_EPOCH};

use aws_lambda_events::event::cloudformation::CloudFormationCustomResourceRequest;
use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init_lambda();
    // Nothing that can fail on configuration happens here: a bad DB_SECRET_ARN must still be
    // reported to CloudFormation (as FAILED), which only the handler can do.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .build()?;
    let env = Env::process();
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<CloudFormationCustomResourceRequest>| {
            let http = http.clone();
            let env = env.clone();
            async move {
                let deadline = UNIX_EPOCH + Duration::from_millis(event.context.deadline);
                migrate_on_deploy::handle(event.payload, deadline, &env, &http)
                    .await
                    .map_err(lambda_runtime::Error::from)
            }
        },
    ))
    .await
}
