//! Who is calling: the identity an authorizer put in Lambda's request context.

use axum::extract::Request;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use shared::error_code::ErrorCode;

use crate::error::ApiError;

/// The session name IAM gives every caller of a Cognito identity pool's role: its `userId` is
/// `AROA…:CognitoIdentityCredentials` for all of them, so it never identifies one user.
const COGNITO_POOL_SESSION: &str = ":CognitoIdentityCredentials";

/// The caller's identity from Lambda's request context: API Gateway REST authorizer claims
/// (`claims.sub`, or a Lambda authorizer's `principalId`) or IAM caller; HTTP API / Function URL
/// JWT claims `sub` or IAM caller. Plain HTTP (local runner) has none.
///
/// An IAM caller that signed with Cognito identity-pool credentials is its Cognito identity id;
/// the shared pool-role session without one is refused (403), never used as a user.
pub(crate) fn authorizer_identity(request: &Request) -> Result<Option<String>, ApiError> {
    let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    let Some(context) = request.extensions().request_context_ref() else {
        return Ok(None);
    };
    match context {
        RequestContext::ApiGatewayV1(ctx) => {
            let fields = &ctx.authorizer.fields;
            let claimed = fields
                .get("claims")
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str())
                .and_then(non_empty)
                .or_else(|| {
                    fields
                        .get("principalId")
                        .and_then(|s| s.as_str())
                        .and_then(non_empty)
                });
            match claimed {
                Some(user) => Ok(Some(user)),
                None => iam_caller(
                    ctx.identity.user.as_deref().and_then(non_empty),
                    ctx.identity
                        .cognito_identity_id
                        .as_deref()
                        .and_then(non_empty),
                ),
            }
        }
        RequestContext::ApiGatewayV2(ctx) => {
            let Some(auth) = ctx.authorizer.as_ref() else {
                return Ok(None);
            };
            if let Some(sub) = auth
                .jwt
                .as_ref()
                .and_then(|jwt| jwt.claims.get("sub"))
                .and_then(|s| non_empty(s))
            {
                return Ok(Some(sub));
            }
            match auth.iam.as_ref() {
                Some(iam) => iam_caller(
                    iam.user_id.as_deref().and_then(non_empty),
                    iam.cognito_identity
                        .as_ref()
                        .and_then(|c| c.identity_id.as_deref())
                        .and_then(non_empty),
                ),
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// An IAM caller's user: its Cognito identity when it has one, else its IAM unique id, unless
/// that id is the session every Cognito identity-pool user shares.
fn iam_caller(
    user_id: Option<String>,
    cognito_identity_id: Option<String>,
) -> Result<Option<String>, ApiError> {
    if let Some(identity) = cognito_identity_id {
        return Ok(Some(identity));
    }
    match user_id {
        Some(id) if id.ends_with(COGNITO_POOL_SESSION) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "signed with Cognito identity-pool credentials but the request carries no Cognito \
             identity id: the role session is shared by every user of the pool, so it cannot \
             identify you",
        )),
        other => Ok(other),
    }
}
