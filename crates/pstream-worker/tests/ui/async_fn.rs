pstream_worker::function! {
    async fn fetch(url: String) -> String {
        url
    }
}

fn main() {}
