//! The expansion behind `pstream::function!` (and `pstream_worker::function!`), which
//! forward to [`function`] with the path of their own crate first. Not for direct use.
//!
//! A procedural macro rather than `macro_rules!`, because the forms users write need
//! to be taken apart: any argument pattern (`mut x`, `(a, b)`), several arguments, no
//! return type, and a return type recognised as a result by its last path segment
//! (`Result`, `std::result::Result`, `io::Result`, `anyhow::Result`, ...). And the
//! expansion must bind no name of its own where the caller's constants are in scope
//! (a function named `len` made the old macro's `len` parameter a constant pattern).
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

/// `function! { (path::of::the::crate) <fn items> }`: define each function and
/// register it. See `pstream::function!`.
#[proc_macro]
pub fn function(input: TokenStream) -> TokenStream {
    let input = TokenStream2::from(input);
    let mut tokens = input.into_iter();
    let krate = match tokens.next() {
        Some(TokenTree::Group(g)) => g.stream(),
        _ => {
            return syn::Error::new(
                Span::call_site(),
                "use `pstream::function!`, not this macro directly",
            )
            .to_compile_error()
            .into()
        }
    };
    let items: Items = match syn::parse2(tokens.collect()) {
        Ok(items) => items,
        Err(e) => return e.to_compile_error().into(),
    };
    let mut out = TokenStream2::new();
    for item in &items.0 {
        match expand(&krate, item) {
            Ok(t) => out.extend(t),
            Err(e) => out.extend(e.to_compile_error()),
        }
    }
    out.into()
}

struct Items(Vec<ItemFn>);

impl Parse for Items {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut items = Vec::new();
        while !input.is_empty() {
            items.push(input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!(
                        "{e}: `pstream::function!` takes functions, written as usual: \
                         `fn name(arg: Type) -> Output {{ ... }}`"
                    ),
                )
            })?);
        }
        if items.is_empty() {
            return Err(input.error("`pstream::function!` needs at least one `fn`"));
        }
        Ok(Items(items))
    }
}

fn refuse<T>(span: impl Spanned, message: &str) -> syn::Result<T> {
    Err(syn::Error::new(span.span(), message))
}

fn expand(krate: &TokenStream2, item: &ItemFn) -> syn::Result<TokenStream2> {
    let sig = &item.sig;
    let name = &sig.ident;
    let name_str = name.to_string();
    if let Some(c) = &sig.constness {
        return refuse(c, "a pstream function cannot be `const`: remove `const`");
    }
    if let Some(a) = &sig.asyncness {
        return refuse(
            a,
            "a pstream function cannot be `async`: workers call it on a thread, so \
             write a plain `fn` (block on a runtime inside it if you must)",
        );
    }
    if let Some(u) = &sig.unsafety {
        return refuse(u, "a pstream function cannot be `unsafe`: remove `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        return refuse(
            abi,
            "a pstream function cannot have an ABI: remove `extern`",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return refuse(
            &sig.generics,
            "a pstream function cannot be generic: only its name travels, so its input \
             and output types must be concrete; define one function per type",
        );
    }
    if let Some(v) = &sig.variadic {
        return refuse(v, "a pstream function cannot be variadic");
    }
    if name_str.starts_with("__pstream") {
        return refuse(name, "names starting with `__pstream` are pstream's own");
    }

    let mut pats = Vec::new();
    let mut tys = Vec::new();
    // The last argument, taken by shared reference to a sized type that is not a
    // slice or `str`, is per-worker state: `words: &Words`.
    let mut state: Option<&Type> = None;
    let count = sig.inputs.len();
    for (position, arg) in sig.inputs.iter().enumerate() {
        let arg = match arg {
            FnArg::Typed(arg) => arg,
            FnArg::Receiver(r) => {
                return refuse(
                    r,
                    "a pstream function cannot take `self`: it is a free function",
                )
            }
        };
        check_not_the_name(&arg.pat, name)?;
        if let Type::Reference(r) = &*arg.ty {
            let unsized_input = matches!(&*r.elem, Type::Slice(_))
                || matches!(&*r.elem, Type::Path(p) if p.path.is_ident("str"));
            if position + 1 == count && r.mutability.is_none() && !unsized_input {
                state = Some(&r.elem);
                continue;
            }
            if r.mutability.is_some() && position + 1 == count && !unsized_input {
                return refuse(
                    r,
                    "per-worker state is shared by the items: take it as `&T`, not \
                     `&mut T` (use a `Mutex` or a `Cell` inside it to change it)",
                );
            }
            return refuse(
                r,
                "a pstream function takes its arguments by value (each item is decoded \
                 into them): take `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`; \
                 only the last argument may be a reference, `state: &T`, to state built \
                 once per worker (`T: pstream::WorkerState`)",
            );
        }
        pats.push(&*arg.pat);
        tys.push(&*arg.ty);
    }

    // The input: nothing, the one argument's type, or a tuple of them all.
    let (in_ty, in_str) = match tys.as_slice() {
        [] => (quote!(()), quote!("()")),
        [ty] => (quote!(#ty), quote!(stringify!(#ty))),
        many => {
            let mut text = vec![quote!("(")];
            for (i, ty) in many.iter().enumerate() {
                if i > 0 {
                    text.push(quote!(", "));
                }
                text.push(quote!(stringify!(#ty)));
            }
            text.push(quote!(")"));
            (quote!((#(#many,)*)), quote!(concat!(#(#text),*)))
        }
    };
    let mut args = match tys.len() {
        0 => quote!(),
        1 => quote!(__pstream_input,),
        n => {
            let idx = (0..n).map(syn::Index::from);
            quote!(#(__pstream_input.#idx,)*)
        }
    };
    // The state, fetched before the body is called: its cell is looked up once
    // per function, and built once per process.
    let (fetch_state, state_hook) = match state {
        Some(state_ty) => {
            args.extend(quote!(__pstream_state));
            let fetch = quote! {
                static __PSTREAM_CELL: ::std::sync::OnceLock<
                    &'static #krate::__private::StateCell<#state_ty>,
                > = ::std::sync::OnceLock::new();
                let __pstream_state: &#state_ty = __PSTREAM_CELL
                    .get_or_init(#krate::__private::state_cell::<#state_ty>)
                    .get()
                    .map_err(::std::string::ToString::to_string)?;
            };
            let hook = quote! {
                const STATE: ::core::option::Option<
                    fn() -> ::core::result::Result<(), &'static str>,
                > = ::core::option::Option::Some(#krate::__private::prepare_state::<#state_ty>);
            };
            (fetch, hook)
        }
        None => (quote!(), quote!()),
    };
    let input_param = if tys.is_empty() {
        quote!(_: ())
    } else {
        quote!(__pstream_input: #in_ty)
    };

    // The output: `()`, the value, or a result's `Ok` type.
    let (out_ty, out_str, call) = match &sig.output {
        ReturnType::Default => (
            quote!(()),
            quote!("()"),
            quote!(::core::result::Result::Ok(__pstream_body(#args))),
        ),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => {
                let out_ty = quote_spanned! {ty.span()=>
                    <#ty as #krate::__private::Fallible>::Out
                };
                let out_str = match ok {
                    Some(ok) => quote!(stringify!(#ok)),
                    None => quote!(stringify!(#ty)),
                };
                let call = quote_spanned! {ty.span()=>
                    #krate::__private::Fallible::into_outcome(__pstream_body(#args))
                };
                (out_ty, out_str, call)
            }
            None => (
                quote!(#ty),
                quote!(stringify!(#ty)),
                quote!(::core::result::Result::Ok(__pstream_body(#args))),
            ),
        },
    };

    // Attributes: documentation on the handle; `cfg` on the handle and on its
    // registration; lint levels on the handle (and so on the body inside it);
    // anything else (`inline`, `cold`, ...) on the body.
    let mut handle_attrs: Vec<&Attribute> = Vec::new();
    let mut cfg_attrs: Vec<&Attribute> = Vec::new();
    let mut body_attrs: Vec<&Attribute> = Vec::new();
    for attr in &item.attrs {
        let path = attr.path();
        if path.is_ident("cfg") || path.is_ident("cfg_attr") {
            handle_attrs.push(attr);
            cfg_attrs.push(attr);
        } else if [
            "doc",
            "allow",
            "warn",
            "deny",
            "forbid",
            "expect",
            "deprecated",
        ]
        .iter()
        .any(|a| path.is_ident(a))
        {
            handle_attrs.push(attr);
        } else {
            body_attrs.push(attr);
        }
    }

    let vis = &item.vis;
    let output = &sig.output;
    let body = &item.block;
    let params = sig.inputs.iter();
    Ok(quote! {
        #(#handle_attrs)*
        #[allow(non_upper_case_globals)]
        #vis const #name: #krate::__private::Function<#in_ty, #out_ty> = {
            #(#body_attrs)*
            fn __pstream_body(#(#params),*) #output #body
            #[inline]
            fn __pstream_local(
                #input_param
            ) -> ::core::result::Result<#out_ty, ::std::string::String> {
                #fetch_state
                #call
            }
            #krate::__private::Function::__new(#name_str, __pstream_local)
        };
        #(#cfg_attrs)*
        const _: () = {
            struct __PstreamEntry;
            impl #krate::__private::Entry for __PstreamEntry {
                type In = #in_ty;
                type Out = #out_ty;
                const LOCAL: #krate::__private::LocalFn<#in_ty, #out_ty> = #name.local();
                #state_hook
            }
            #krate::__private::inventory::submit! {
                #krate::__private::Registration {
                    name: #name_str,
                    input_type: #in_str,
                    output_type: #out_str,
                    call: #krate::__private::entry::<__PstreamEntry>,
                    batch: #krate::__private::batch::<__PstreamEntry>,
                    type_names: #krate::__private::type_names::<#in_ty, #out_ty>,
                }
            }
        };
    })
}

/// Whether `ty` is a result, by the last segment of its path: `None` if not;
/// `Some(Some(T))` for `...Result<T, ...>`; `Some(None)` for a `Result` alias with
/// no arguments (`fmt::Result`).
fn result_ok_type(ty: &Type) -> Option<Option<&Type>> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) => Some(args.args.iter().find_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })),
        _ => Some(None),
    }
}

/// An argument named like the function cannot be bound: the function's handle is a
/// constant of that name, and a pattern takes it for that constant.
fn check_not_the_name(pat: &Pat, name: &Ident) -> syn::Result<()> {
    let mut found = None;
    find_binding(pat, name, &mut found);
    match found {
        Some(span) => Err(syn::Error::new(
            span,
            format!(
                "an argument cannot be named `{name}` like its function: the function's \
                 handle is a constant named `{name}`, which a pattern cannot bind; rename \
                 the argument"
            ),
        )),
        None => Ok(()),
    }
}

fn find_binding(pat: &Pat, name: &Ident, found: &mut Option<Span>) {
    match pat {
        Pat::Ident(p) => {
            if p.ident == *name {
                *found = Some(p.ident.span());
            }
            if let Some((_, sub)) = &p.subpat {
                find_binding(sub, name, found);
            }
        }
        Pat::Tuple(t) => t.elems.iter().for_each(|p| find_binding(p, name, found)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| find_binding(p, name, found)),
        Pat::Struct(s) => s
            .fields
            .iter()
            .for_each(|f| find_binding(&f.pat, name, found)),
        Pat::Slice(s) => s.elems.iter().for_each(|p| find_binding(p, name, found)),
        Pat::Reference(r) => find_binding(&r.pat, name, found),
        Pat::Paren(p) => find_binding(&p.pat, name, found),
        Pat::Type(t) => find_binding(&t.pat, name, found),
        _ => {}
    }
}
