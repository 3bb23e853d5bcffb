//! Who is calling: the identity an authorizer put in Lambda's request context.

use axum::extract::Request;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;

/// The caller's identity from Lambda's request context: API Gateway REST authorizer claims
/// (`claims.sub`, or a Lambda authorizer's `principalId`) or IAM caller; HTTP API / Function URL
/// JWT claims `sub` or IAM caller. Plain HTTP (local runner) has none.
pub(crate) fn authorizer_identity(request: &Request) -> Option<String> {
    let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    match request.extensions().request_context_ref()? {
        RequestContext::ApiGatewayV1(ctx) => {
            let fields = &ctx.authorizer.fields;
            fields
                .get("claims")
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str())
                .and_then(non_empty)
                .or_else(|| {
                    fields
                        .get("principalId")
                        .and_then(|s| s.as_str())
                        .and_then(non_empty)
                })
                .or_else(|| ctx.identity.user.as_deref().and_then(non_empty))
        }
        RequestContext::ApiGatewayV2(ctx) => {
            let auth = ctx.authorizer.as_ref()?;
            auth.jwt
                .as_ref()
                .and_then(|jwt| jwt.claims.get("sub"))
                .and_then(|s| non_empty(s))
                .or_else(|| {
                    auth.iam
                        .as_ref()
                        .and_then(|iam| iam.user_id.as_deref())
                        .and_then(non_empty)
                })
        }
        _ => None,
    }
}
